//! Which endpoint a request is for: the route table, matched on path and method.
//!
//! Hand-rolled rather than a router crate for two reasons: the table must be listable (a test
//! checks the OpenAPI document against it, both ways), and matching must weigh the method.
//! `POST /v1/products/{pk}/devices/import` is the CSV import, while
//! `GET /v1/products/{pk}/devices/import` is the device named `import`, a valid DeviceName.

use hyper::Method;
use percent_encoding::percent_decode_str;

use super::transfers::{Operator, Ownership};

/// What a request asks for, and so which credentials it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The OpenAPI document; needs no credentials.
    OpenApi,
    /// Creates an account; needs the operator token.
    CreateAccount,
    /// Provisions an instance, with its endpoint, for an account; needs the operator token.
    ProvisionInstance,
    /// Operator configuration of accounts (transfer allow-list, organisations); needs the
    /// operator token.
    Operator(Operator),
    /// Everything else needs an API key and sees only its account's resources.
    Tenant(Tenant),
}

/// The endpoints an API key reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tenant {
    Account,
    CreateApiKey,
    Audit,
    RequestCode,
    Regions,
    Instances,
    CreateInstance,
    Instance,
    Usage,
    Products,
    CreateProduct,
    Product,
    UpdateProduct,
    ProductCopies,
    Devices,
    CreateDevices,
    ImportDevices,
    Device,
    DeleteDevice,
    DisableDevice,
    EnableDevice,
    Tasks,
    SubmitTask,
    TaskTemplate,
    Task,
    RetryTask,
    TaskRecords,
    /// Device and instance transfers (PROTOCOL §6, §7), see `transfers.rs`.
    Ownership(Ownership),
}

/// One row of the table: `{name}` segments bind path parameters.
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) endpoint: Endpoint,
}

/// Every route the API serves. The first row matching both path and method wins, so a literal
/// segment is listed before a parameter that would also match it with the same method.
pub(crate) static ROUTES: &[Route] = &[
    route(Method::GET, "/openapi.json", Endpoint::OpenApi),
    route(Method::POST, "/v1/accounts", Endpoint::CreateAccount),
    route(Method::POST, "/v1/operator/instances", Endpoint::ProvisionInstance),
    tenant(Method::GET, "/v1/account", Tenant::Account),
    tenant(Method::POST, "/v1/api-keys", Tenant::CreateApiKey),
    tenant(Method::GET, "/v1/audit", Tenant::Audit),
    tenant(Method::POST, "/v1/verification-codes", Tenant::RequestCode),
    tenant(Method::GET, "/v1/regions", Tenant::Regions),
    tenant(Method::GET, "/v1/instances", Tenant::Instances),
    tenant(Method::POST, "/v1/instances", Tenant::CreateInstance),
    tenant(Method::GET, "/v1/instances/{id}", Tenant::Instance),
    tenant(Method::GET, "/v1/usage", Tenant::Usage),
    tenant(Method::GET, "/v1/products", Tenant::Products),
    tenant(Method::POST, "/v1/products", Tenant::CreateProduct),
    tenant(Method::GET, "/v1/products/{pk}", Tenant::Product),
    tenant(Method::PATCH, "/v1/products/{pk}", Tenant::UpdateProduct),
    tenant(Method::GET, "/v1/product-copies", Tenant::ProductCopies),
    tenant(Method::GET, "/v1/products/{pk}/devices", Tenant::Devices),
    tenant(Method::POST, "/v1/products/{pk}/devices", Tenant::CreateDevices),
    tenant(Method::POST, "/v1/products/{pk}/devices/import", Tenant::ImportDevices),
    tenant(Method::GET, "/v1/products/{pk}/devices/{dn}", Tenant::Device),
    tenant(Method::DELETE, "/v1/products/{pk}/devices/{dn}", Tenant::DeleteDevice),
    tenant(Method::POST, "/v1/products/{pk}/devices/{dn}/disable", Tenant::DisableDevice),
    tenant(Method::POST, "/v1/products/{pk}/devices/{dn}/enable", Tenant::EnableDevice),
    tenant(Method::GET, "/v1/distribution-tasks", Tenant::Tasks),
    tenant(Method::POST, "/v1/distribution-tasks", Tenant::SubmitTask),
    tenant(Method::GET, "/v1/distribution-tasks/template.csv", Tenant::TaskTemplate),
    tenant(Method::GET, "/v1/distribution-tasks/{id}", Tenant::Task),
    tenant(Method::POST, "/v1/distribution-tasks/{id}/retry", Tenant::RetryTask),
    tenant(Method::GET, "/v1/distribution-tasks/{id}/records.csv", Tenant::TaskRecords),
    operator(Method::GET, "/v1/operator/transfer-allow-list", Operator::AllowList),
    operator(Method::PUT, "/v1/operator/transfer-allow-list/{account}", Operator::Allow),
    operator(Method::DELETE, "/v1/operator/transfer-allow-list/{account}", Operator::Disallow),
    operator(
        Method::PUT,
        "/v1/operator/accounts/{account}/organisation",
        Operator::SetOrganisation,
    ),
    transfer(Method::GET, "/v1/device-transfers", Ownership::DeviceTransfers),
    transfer(Method::POST, "/v1/device-transfers", Ownership::CreateDeviceTransfer),
    transfer(Method::GET, "/v1/device-transfers/template.csv", Ownership::DeviceTransferTemplate),
    transfer(Method::GET, "/v1/device-transfers/{id}", Ownership::DeviceTransfer),
    transfer(Method::POST, "/v1/device-transfers/{id}/accept", Ownership::AcceptDeviceTransfer),
    transfer(Method::POST, "/v1/device-transfers/{id}/reject", Ownership::RejectDeviceTransfer),
    transfer(Method::POST, "/v1/device-transfers/{id}/cancel", Ownership::CancelDeviceTransfer),
    transfer(Method::GET, "/v1/product-views", Ownership::ProductViews),
    transfer(Method::GET, "/v1/product-views/{id}", Ownership::ProductView),
    transfer(Method::GET, "/v1/product-views/{id}/devices", Ownership::ViewDevices),
    transfer(Method::GET, "/v1/product-views/{id}/devices/{dn}", Ownership::ViewDevice),
    transfer(Method::DELETE, "/v1/product-views/{id}/devices/{dn}", Ownership::DeleteViewDevice),
    transfer(
        Method::POST,
        "/v1/product-views/{id}/devices/{dn}/disable",
        Ownership::DisableViewDevice,
    ),
    transfer(
        Method::POST,
        "/v1/product-views/{id}/devices/{dn}/enable",
        Ownership::EnableViewDevice,
    ),
    transfer(Method::GET, "/v1/instance-transfers", Ownership::InstanceTransfers),
    transfer(Method::POST, "/v1/instance-transfers", Ownership::InitiateInstanceTransfers),
    transfer(Method::POST, "/v1/instance-transfers/confirm", Ownership::ConfirmInstanceTransfers),
    transfer(Method::POST, "/v1/instance-transfers/cancel", Ownership::CancelInstanceTransfers),
    transfer(Method::POST, "/v1/instance-transfers/reject", Ownership::RejectInstanceTransfers),
    transfer(Method::GET, "/v1/instance-transfers/{id}", Ownership::InstanceTransfer),
    transfer(Method::POST, "/v1/instances/{id}/renew", Ownership::RenewInstance),
    transfer(Method::GET, "/v1/organisation/instances", Ownership::OrganisationInstances),
    transfer(
        Method::GET,
        "/v1/organisation/instance-transfers",
        Ownership::OrganisationInstanceTransfers,
    ),
];

const fn route(method: Method, path: &'static str, endpoint: Endpoint) -> Route {
    Route { method, path, endpoint }
}

const fn tenant(method: Method, path: &'static str, endpoint: Tenant) -> Route {
    route(method, path, Endpoint::Tenant(endpoint))
}

const fn transfer(method: Method, path: &'static str, endpoint: Ownership) -> Route {
    tenant(method, path, Tenant::Ownership(endpoint))
}

const fn operator(method: Method, path: &'static str, endpoint: Operator) -> Route {
    route(method, path, Endpoint::Operator(endpoint))
}

/// The outcome of matching a request against [`ROUTES`].
#[derive(Debug, PartialEq)]
pub(crate) enum Resolution {
    Found(Endpoint, Params),
    /// The path exists, but not with this method; these are the methods it takes.
    WrongMethod(Vec<Method>),
    NotFound,
}

pub(crate) fn resolve(method: &Method, path: &str) -> Resolution {
    let segments: Vec<&str> = path.split('/').collect();
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(params) = bind(route.path, &segments) else { continue };
        if route.method == *method {
            return Resolution::Found(route.endpoint, params);
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() { Resolution::NotFound } else { Resolution::WrongMethod(allowed) }
}

/// Path parameters, percent-decoded (a DeviceName may hold `@` and `:`, which clients encode).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of `{name}`; empty if the route has no such parameter, which no resource
    /// identifier accepts, so a mistake here surfaces as "not found" rather than a panic.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| *key == name).map_or("", |(_, value)| value)
    }
}

fn bind(template: &'static str, segments: &[&str]) -> Option<Params> {
    let mut params = Params::default();
    let mut expected = template.split('/');
    for segment in segments {
        let want = expected.next()?;
        match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(name) => {
                let value = percent_decode_str(segment).decode_utf8().ok()?;
                if value.is_empty() {
                    return None;
                }
                params.0.push((name, value.into_owned()));
            }
            None if want == *segment => {}
            None => return None,
        }
    }
    expected.next().is_none().then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(method: Method, path: &str) -> (Endpoint, Params) {
        match resolve(&method, path) {
            Resolution::Found(endpoint, params) => (endpoint, params),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn binds_parameters() {
        let (endpoint, params) = found(Method::GET, "/v1/products/a13FN5TplKq/devices/lamp-1");
        assert_eq!(endpoint, Endpoint::Tenant(Tenant::Device));
        assert_eq!(params.get("pk"), "a13FN5TplKq");
        assert_eq!(params.get("dn"), "lamp-1");
        assert_eq!(params.get("missing"), "");
    }

    #[test]
    fn percent_decodes_parameters() {
        let (_, params) = found(Method::DELETE, "/v1/products/a13FN5TplKq/devices/a%40b%3Ac");
        assert_eq!(params.get("dn"), "a@b:c");
        assert_eq!(resolve(&Method::GET, "/v1/instances/%FF"), Resolution::NotFound);
    }

    #[test]
    fn literal_segments_win_for_their_method_only() {
        let import = "/v1/products/a13FN5TplKq/devices/import";
        assert_eq!(found(Method::POST, import).0, Endpoint::Tenant(Tenant::ImportDevices));
        let (endpoint, params) = found(Method::GET, import);
        assert_eq!(endpoint, Endpoint::Tenant(Tenant::Device));
        assert_eq!(params.get("dn"), "import");
        let template = "/v1/distribution-tasks/template.csv";
        assert_eq!(found(Method::GET, template).0, Endpoint::Tenant(Tenant::TaskTemplate));
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones() {
        assert_eq!(
            resolve(&Method::DELETE, "/v1/products"),
            Resolution::WrongMethod(vec![Method::GET, Method::POST])
        );
    }

    #[test]
    fn unknown_paths() {
        for path in ["/", "", "/v1", "/v1/products/", "/v1/products//devices", "/v2/account"] {
            assert_eq!(resolve(&Method::GET, path), Resolution::NotFound, "{path}");
        }
    }
}
