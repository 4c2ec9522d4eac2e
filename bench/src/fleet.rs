//! The benchmark fleet: a registry on a temporary redb file with one account, two regions with
//! an instance each, one product and N devices whose names and secrets are a function of their
//! index, so a client process can sign device `n` without asking the broker's process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use meridian_registry::clock::{Clock, SystemClock};
use meridian_registry::model::{
    Account, AccountKind, Edition, Instance, MqttEndpoint, Product, Region,
};
use meridian_registry::secret::{DeviceSecret, SecretKey};
use meridian_registry::signature::{SdkShape, sign_connect};
use meridian_registry::store::{RedbStore, Store};
use meridian_registry::{NewDevice, Registry};

use crate::mqtt::Login;

pub const ACCOUNT: &str = "bench";
pub const PRODUCT: &str = "bnchPrdct01";
/// The product's home instance, where devices connect first.
pub const SOURCE: &str = "iot-src-1";
pub const SOURCE_REGION: &str = "cn-shanghai";
/// Where the migrate scenario moves them.
pub const DESTINATION: &str = "iot-dst-1";
pub const DESTINATION_REGION: &str = "eu-central-1";
/// The standard user Meridian's throughput clients log in as.
pub const USER: (&str, &str) = ("bench", "bench-password");

/// Devices are created in commits of this many (the registry takes up to 10,000 per call; a
/// smaller batch keeps each redb commit short).
const SEED_BATCH: usize = 5_000;

pub fn device_name(n: usize) -> String {
    format!("dev-{n:07}")
}

pub fn device_secret(n: usize) -> String {
    format!("bench-secret-{n:07}-x")
}

/// The signed PROTOCOL §2 login of device `n`, as the C SDK builds it.
pub fn device_login(n: usize) -> Login {
    let signed = sign_connect(SdkShape::CSdk, PRODUCT, &device_name(n), &device_secret(n), None);
    Login::Device {
        client_id: signed.client_id,
        username: signed.username,
        password: signed.password,
    }
}

/// A seeded registry; the temporary directory lives as long as it does.
pub struct Fleet {
    pub registry: Registry,
    pub store: Arc<dyn Store>,
    pub sealer: SecretKey,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Creates the registry and `devices` devices of [`PRODUCT`], homed at [`SOURCE`].
    pub async fn seed(devices: usize) -> Result<Fleet> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let store: Arc<dyn Store> = Arc::new(
            RedbStore::open(dir.path().join("registry.redb")).context("opening the store")?,
        );
        let sealer = SecretKey::from_hex(&SecretKey::generate_hex()?)?;
        let registry = Registry::new(store.clone(), sealer.clone(), Arc::new(SystemClock));
        seed_catalogue(&registry).await?;
        create_devices(&registry, 0..devices, SEED_BATCH).await?;
        Ok(Fleet { registry, store, sealer, _dir: dir })
    }
}

/// The account, both regions and their instances, and [`PRODUCT`] homed at [`SOURCE`].
pub async fn seed_catalogue(registry: &Registry) -> Result<()> {
    let now = SystemClock.now();
    registry
        .create_account(Account {
            id: ACCOUNT.parse()?,
            name: "Bench".into(),
            kind: AccountKind::Enterprise,
            verified_entity: Some("Bench Ltd".into()),
            organisation: None,
            organisation_admin: false,
            created_at: now,
        })
        .await?;
    for (region, lat, lon, instance) in
        [(SOURCE_REGION, 31.23, 121.47, SOURCE), (DESTINATION_REGION, 50.11, 8.68, DESTINATION)]
    {
        registry
            .put_region(Region {
                id: region.parse()?,
                display_name: region.into(),
                latitude: lat,
                longitude: lon,
                bias_km: 0.0,
                public_endpoint: None,
            })
            .await?;
        registry
            .create_instance(Instance {
                id: instance.parse()?,
                region: region.parse()?,
                owner: ACCOUNT.parse()?,
                edition: Edition::Public,
                // Replaced with the real listener address once the broker is bound.
                endpoint: MqttEndpoint { host: "127.0.0.1".into(), tcp_port: 1883, tls_port: None },
                created_at: now,
                expires_at: now.after(Duration::from_secs(86_400 * 365)),
            })
            .await?;
    }
    registry
        .create_product(Product {
            key: PRODUCT.parse()?,
            name: "Bench lamp".into(),
            owner: ACCOUNT.parse()?,
            home_instance: SOURCE.parse()?,
            published: true,
            topic_categories: Vec::new(),
            tsl: serde_json::Value::Null,
            parsing_script: None,
            created_at: now,
        })
        .await?;
    Ok(())
}

/// Creates devices `range` of [`PRODUCT`], `per_call` per registry call.
pub async fn create_devices(
    registry: &Registry,
    range: std::ops::Range<usize>,
    per_call: usize,
) -> Result<()> {
    let product = PRODUCT.parse()?;
    for start in range.clone().step_by(per_call.max(1)) {
        let batch = (start..range.end.min(start + per_call))
            .map(|n| {
                Ok(NewDevice {
                    name: device_name(n).parse()?,
                    secret: Some(DeviceSecret::new(device_secret(n))?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        registry.create_devices(&product, batch).await.context("creating devices")?;
    }
    Ok(())
}
