//! `ctl products`: the caller's products (TSL model, parsing script, topic categories) and
//! the read-only copies other products left at the caller's instances.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Ctl;
use super::client::segment;
use super::output::{self, Table, fields};

#[derive(Subcommand)]
pub(super) enum Command {
    /// List your products.
    List,
    /// Create a product homed at one of your instances.
    Create {
        #[arg(long)]
        name: String,
        /// The home instance.
        #[arg(long)]
        instance: String,
        /// ProductKey (11-32 letters and digits); generated when absent.
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        definition: Definition,
    },
    /// Show one product.
    Show { pk: String },
    /// Publish a product.
    Publish { pk: String },
    /// Edit a product; what is not given stays as it is.
    #[command(group(
        ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["name", "tsl", "script", "topic_categories"])
    ))]
    Update {
        pk: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        definition: Definition,
    },
    /// List the read-only product copies distributed to your instances.
    Copies,
}

/// A product's definition, each part from a file.
#[derive(clap::Args)]
pub(super) struct Definition {
    /// The TSL model: a JSON file.
    #[arg(long, value_name = "FILE")]
    tsl: Option<PathBuf>,
    /// The parsing script: a text file.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// Topic categories: a JSON file holding an array of
    /// `{"topic": "/${productKey}/${deviceName}/user/update", "operation": "publish"}`.
    #[arg(long, value_name = "FILE")]
    topic_categories: Option<PathBuf>,
}

/// The definition as the API takes it, files read and checked to be what they claim.
#[derive(Serialize)]
struct DefinitionBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    tsl: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parsing_script: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic_categories: Option<Vec<Value>>,
}

impl Definition {
    fn read(self) -> anyhow::Result<DefinitionBody> {
        let tsl = self.tsl.as_deref().map(read_json).transpose()?;
        let parsing_script = self.script.as_deref().map(read_text).transpose()?;
        let topic_categories = match self.topic_categories.as_deref() {
            Some(path) => {
                let value = read_json(path)?;
                let Value::Array(categories) = value else {
                    anyhow::bail!("{} must hold a JSON array of topic categories", path.display());
                };
                Some(categories)
            }
            None => None,
        };
        Ok(DefinitionBody { tsl, parsing_script, topic_categories })
    }
}

#[derive(Deserialize)]
struct List {
    products: Vec<Product>,
}

#[derive(Deserialize)]
struct Product {
    key: String,
    name: String,
    home_instance: String,
    published: bool,
    #[serde(default)]
    topic_categories: Vec<TopicCategory>,
    #[serde(default)]
    tsl: Value,
    #[serde(default)]
    parsing_script: Option<String>,
    created_at: u64,
}

#[derive(Deserialize)]
struct TopicCategory {
    topic: String,
    operation: String,
}

#[derive(Deserialize)]
struct Copies {
    product_copies: Vec<ProductCopy>,
}

#[derive(Deserialize)]
struct ProductCopy {
    instance: String,
    product: Product,
    copied_at: u64,
}

pub(super) async fn run(ctl: &Ctl, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List => {
            let answer = ctl.client.get("/v1/products").await?;
            ctl.show(&answer, |list: List| {
                let mut table = Table::new(&["KEY", "NAME", "HOME", "PUBLISHED", "CREATED"]);
                for product in list.products {
                    table.row([
                        product.key,
                        product.name,
                        product.home_instance,
                        yes_no(product.published),
                        output::time(product.created_at),
                    ]);
                }
                table.print("no products")
            })
        }
        Command::Create { name, instance, key, definition } => {
            #[derive(Serialize)]
            struct NewProduct {
                #[serde(skip_serializing_if = "Option::is_none")]
                key: Option<String>,
                name: String,
                home_instance: String,
                #[serde(flatten)]
                definition: DefinitionBody,
            }
            let definition = definition.read()?;
            let body = NewProduct { key, name, home_instance: instance, definition };
            let answer = ctl.client.post("/v1/products", &body).await?;
            ctl.show(&answer, |product: Product| {
                output::line(format!(
                    "created product {} ({}) homed at {}",
                    product.key, product.name, product.home_instance
                ))
            })
        }
        Command::Show { pk } => {
            let answer = ctl.client.get(&path(&pk)).await?;
            ctl.show(&answer, show)
        }
        Command::Publish { pk } => {
            let answer =
                ctl.client.patch(&path(&pk), &serde_json::json!({ "published": true })).await?;
            ctl.show(&answer, |product: Product| {
                output::line(format!("published product {}", product.key))
            })
        }
        Command::Update { pk, name, definition } => {
            #[derive(Serialize)]
            struct Patch {
                #[serde(skip_serializing_if = "Option::is_none")]
                name: Option<String>,
                #[serde(flatten)]
                definition: DefinitionBody,
            }
            let body = Patch { name, definition: definition.read()? };
            let answer = ctl.client.patch(&path(&pk), &body).await?;
            ctl.show(&answer, |product: Product| {
                output::line(format!("updated product {}", product.key))
            })
        }
        Command::Copies => {
            let answer = ctl.client.get("/v1/product-copies").await?;
            ctl.show(&answer, |copies: Copies| {
                let mut table = Table::new(&["INSTANCE", "KEY", "NAME", "COPIED"]);
                for copy in copies.product_copies {
                    table.row([
                        copy.instance,
                        copy.product.key,
                        copy.product.name,
                        output::time(copy.copied_at),
                    ]);
                }
                table.print("no product copies")
            })
        }
    }
}

fn path(pk: &str) -> String {
    format!("/v1/products/{}", segment(pk))
}

fn show(product: Product) -> std::io::Result<()> {
    let tsl = match &product.tsl {
        Value::Null => String::new(),
        tsl => format!("{} bytes of JSON (--output json shows it)", tsl.to_string().len()),
    };
    let script = product
        .parsing_script
        .map(|script| format!("{} bytes (--output json shows it)", script.len()))
        .unwrap_or_default();
    let categories = product
        .topic_categories
        .iter()
        .map(|category| format!("{} {}", category.operation, category.topic))
        .collect::<Vec<_>>()
        .join(", ");
    fields(&[
        ("key", product.key),
        ("name", product.name),
        ("home instance", product.home_instance),
        ("published", yes_no(product.published)),
        ("topic categories", categories),
        ("TSL", tsl),
        ("parsing script", script),
        ("created", output::time(product.created_at)),
    ])
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = read_text(path)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}
