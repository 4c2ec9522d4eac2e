//! The OpenAPI 3.1 document describing this API, hand-written in `control/openapi.json`.
//!
//! Hand-written rather than generated: generating it would mean schema derives on the
//! registry's records, a dependency the registry should not carry for one consumer. The tests
//! below keep it honest: it lists exactly the routes of [`super::router::ROUTES`], with the
//! credentials each needs, and every `$ref` in it resolves.

use bytes::Bytes;
use hyper::StatusCode;

use super::response::{Response, bytes_response};

pub(crate) const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`
pub(super) fn response() -> Response {
    bytes_response(StatusCode::OK, "application/json", Bytes::from_static(DOCUMENT.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::super::router::{Endpoint, ROUTES};
    use super::*;

    const METHODS: [&str; 8] =
        ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    #[test]
    fn is_openapi_3_1() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        assert!(document["info"]["title"].is_string());
        assert!(document["info"]["version"].is_string());
    }

    #[test]
    fn lists_exactly_the_routes_the_router_knows() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        let documented: BTreeSet<(String, String)> = paths
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().expect("path item");
                item.keys()
                    .filter(|key| METHODS.contains(&key.as_str()))
                    .map(|method| (method.to_uppercase(), path.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|route| (route.method.as_str().to_owned(), route.path.to_owned()))
            .collect();
        assert_eq!(routed.len(), ROUTES.len(), "a route is listed twice");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "openapi.json documents unknown routes: {unrouted:?}");
    }

    #[test]
    fn states_the_credentials_each_route_needs() {
        let document = document();
        assert_eq!(document["security"], serde_json::json!([{ "apiKey": [] }]));
        for route in ROUTES {
            let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
            let expected = match route.endpoint {
                Endpoint::OpenApi => serde_json::json!([]),
                Endpoint::CreateAccount | Endpoint::ProvisionInstance | Endpoint::Operator(_) => {
                    serde_json::json!([{ "operatorToken": [] }])
                }
                // Inherits the document-wide API key requirement.
                Endpoint::Tenant(_) => Value::Null,
            };
            assert_eq!(operation["security"], expected, "{} {}", route.method, route.path);
            assert!(operation["operationId"].is_string(), "{} {}", route.method, route.path);
            assert!(operation["responses"].is_object(), "{} {}", route.method, route.path);
        }
    }

    #[test]
    fn path_parameters_are_declared() {
        let document = document();
        for route in ROUTES {
            let operation = &document["paths"][route.path][route.method.as_str().to_lowercase()];
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(document["paths"][route.path]["parameters"].as_array().into_iter().flatten())
                .map(|parameter| resolve(&document, parameter))
                .filter(|parameter| parameter["in"] == "path")
                .filter_map(|parameter| parameter["name"].as_str())
                .collect();
            let in_path: BTreeSet<&str> = route
                .path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_path, "{} {}", route.method, route.path);
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn visit<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        refs.push(target);
                    }
                    map.values().for_each(|value| visit(value, refs));
                }
                Value::Array(items) => items.iter().for_each(|value| visit(value, refs)),
                _ => {}
            }
        }
        let document = document();
        let mut refs = Vec::new();
        visit(&document, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(document.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str().and_then(|target| target.strip_prefix('#')) {
            Some(pointer) => document.pointer(pointer).unwrap_or(&Value::Null),
            None => value,
        }
    }
}
