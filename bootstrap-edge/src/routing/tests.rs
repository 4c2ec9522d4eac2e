use std::net::IpAddr;

use bytes::Bytes;
use meridian_geo::{FallbackReason, Locator, LocatorOptions, LookupOutcome};
use meridian_registry::clock::Timestamp;
use meridian_registry::model::{Edition, Instance, MqttEndpoint, Region};
use meridian_registry::store::Change;
use serde_json::{Value, json};

use super::*;

const PK: &str = "a1b2c3d4e5f";

struct Fixture {
    table: Arc<RoutingTable>,
    writer: TableWriter,
    revision: u64,
}

impl Fixture {
    fn new() -> Self {
        let (table, writer) = RoutingTable::new();
        let mut fixture = Fixture { table, writer, revision: 0 };
        for (id, lat, lon) in [("eu-central-1", 50.11, 8.68), ("cn-shanghai", 31.23, 121.47)] {
            fixture.put_region(id, lat, lon);
        }
        fixture.put_instance("iot-fra-1", "eu-central-1", Edition::Public);
        fixture.put_instance("iot-sh-1", "cn-shanghai", Edition::Public);
        fixture.put(&format!("products/{PK}"), json!({
            "key": PK, "name": "p", "owner": "acme", "home_instance": "iot-sh-1", "created_at": 0
        }));
        fixture
    }

    fn put(&mut self, key: &str, value: Value) {
        self.revision += 1;
        let value = Bytes::from(serde_json::to_vec(&value).expect("json"));
        self.writer.apply(&Change {
            revision: self.revision,
            key: key.to_owned(),
            value: Some(value),
        });
    }

    fn delete(&mut self, key: &str) {
        self.revision += 1;
        self.writer.apply(&Change { revision: self.revision, key: key.to_owned(), value: None });
    }

    fn put_region(&mut self, id: &str, latitude: f64, longitude: f64) {
        let region = Region {
            id: id.parse().expect("region id"),
            display_name: id.to_owned(),
            latitude,
            longitude,
            bias_km: 0.0,
            public_endpoint: None,
        };
        self.put(&format!("regions/{id}"), serde_json::to_value(region).expect("json"));
    }

    fn put_instance(&mut self, id: &str, region: &str, edition: Edition) {
        let instance = Instance {
            id: id.parse().expect("instance id"),
            region: region.parse().expect("region id"),
            owner: "acme".parse().expect("account id"),
            edition,
            endpoint: MqttEndpoint {
                host: format!("{id}.example"),
                tcp_port: 1883,
                tls_port: None,
            },
            created_at: Timestamp(0),
            expires_at: Timestamp(1),
        };
        self.put(&format!("instances/{id}"), serde_json::to_value(instance).expect("json"));
    }

    fn put_device(&mut self, name: &str, placement: Value) {
        self.put(
            &format!("devices/{PK}/{name}"),
            json!({
                "key": {"productKey": PK, "deviceName": name},
                "secret": "00",
                "owner": "acme",
                "status": "inactive",
                "placement": placement,
                "created_at": 0
            }),
        );
    }

    /// The host the table answers for `name`, or `None` when unroutable.
    fn host(&self, name: &str) -> Option<String> {
        self.resolve(name).0
    }

    fn resolve(&self, name: &str) -> (Option<String>, Option<LookupOutcome>) {
        let locator = Locator::new(None, "eu-central-1", LocatorOptions::default());
        let device = DeviceKey {
            product_key: PK.parse().expect("pk"),
            device_name: name.parse().expect("dn"),
        };
        let client: IpAddr = "8.8.8.8".parse().expect("ip");
        match self.table.resolve(&device, client, &locator) {
            Resolution::Endpoint { reply, geo } => (Some(host_of(&reply)), geo),
            Resolution::Unroutable => (None, None),
        }
    }
}

fn host_of(reply: &[u8]) -> String {
    let body: Value = serde_json::from_slice(reply).expect("json reply");
    body["data"]["resources"]["mqtt"]["host"].as_str().expect("host").to_owned()
}

#[test]
fn each_placement_resolves_to_its_endpoint() {
    let mut f = Fixture::new();
    f.put_device("home-1", json!({"kind": "home"}));
    f.put_device("spec-1", json!({"kind": "specified", "instance": "iot-fra-1"}));
    f.put_device(
        "near-1",
        json!({"kind": "nearest", "candidates": [
            {"region": "cn-shanghai", "instance": "iot-sh-1"},
            {"region": "eu-central-1", "instance": "iot-fra-1"}
        ]}),
    );
    assert_eq!(f.host("home-1").as_deref(), Some("iot-sh-1.example"));
    assert_eq!(f.host("spec-1").as_deref(), Some("iot-fra-1.example"));
    // No GeoIP database: nearest access falls back to the default region.
    let (host, geo) = f.resolve("near-1");
    assert_eq!(host.as_deref(), Some("iot-fra-1.example"));
    assert_eq!(geo, Some(LookupOutcome::Fallback(FallbackReason::NoDatabase)));
    assert_eq!(f.table.device_count(), 3);
}

#[test]
fn unknown_and_unplaced_devices_are_one_answer() {
    let mut f = Fixture::new();
    assert_eq!(f.host("nobody"), None);
    f.put_device("lost-1", json!({"kind": "specified", "instance": "iot-gone-1"}));
    f.put_device("lost-2", json!({"kind": "nearest", "candidates": []}));
    assert_eq!(f.resolve("lost-1"), (None, None));
    assert_eq!(f.resolve("lost-2"), (None, None));
}

#[test]
fn changes_and_deletes_take_effect() {
    let mut f = Fixture::new();
    f.put_device("dev-1", json!({"kind": "home"}));
    f.put_device("dev-1", json!({"kind": "specified", "instance": "iot-fra-1"}));
    assert_eq!(f.host("dev-1").as_deref(), Some("iot-fra-1.example"));
    assert_eq!(f.table.device_count(), 1, "an update is not a second device");

    f.delete("instances/iot-fra-1");
    assert_eq!(f.host("dev-1"), None, "a deleted instance routes nowhere");

    f.delete(&format!("devices/{PK}/dev-1"));
    assert_eq!(f.host("dev-1"), None);
    assert_eq!(f.table.device_count(), 0);
}

#[test]
fn nearest_choices_follow_the_catalogue() {
    // A snapshot delivers devices before instances and regions (key order).
    let (table, writer) = RoutingTable::new();
    let mut f = Fixture { table, writer, revision: 0 };
    let nearest = json!({"kind": "nearest", "candidates": [
        {"region": "cn-shanghai", "instance": "iot-sh-1"},
        {"region": "eu-central-1", "instance": "iot-fra-1"}
    ]});
    f.put_device("near-1", nearest.clone());
    assert_eq!(f.host("near-1"), None, "no candidate resolvable yet");
    f.put_region("cn-shanghai", 31.23, 121.47);
    f.put_instance("iot-sh-1", "cn-shanghai", Edition::Public);
    assert_eq!(f.host("near-1").as_deref(), Some("iot-sh-1.example"), "the only choice");
    f.put_region("eu-central-1", 50.11, 8.68);
    f.put_instance("iot-fra-1", "eu-central-1", Edition::Public);
    assert_eq!(f.host("near-1").as_deref(), Some("iot-fra-1.example"), "the default region");

    // A second device with the same placement shares the set and its choices.
    f.put_device("near-2", nearest);
    assert_eq!(f.host("near-2").as_deref(), Some("iot-fra-1.example"));

    f.delete("regions/eu-central-1");
    assert_eq!(f.host("near-1").as_deref(), Some("iot-sh-1.example"), "region gone");
    f.put_region("eu-central-1", 50.11, 8.68);
    f.delete("instances/iot-fra-1");
    assert_eq!(f.host("near-2").as_deref(), Some("iot-sh-1.example"), "instance gone");
    f.delete("instances/iot-sh-1");
    assert_eq!(f.host("near-1"), None, "nothing left");
}

#[test]
fn devices_may_arrive_before_their_product() {
    let (table, writer) = RoutingTable::new();
    let mut f = Fixture { table, writer, revision: 0 };
    f.put_device("early-1", json!({"kind": "home"}));
    assert_eq!(f.host("early-1"), None);
    f.put_region("cn-shanghai", 31.23, 121.47);
    f.put_instance("iot-sh-1", "cn-shanghai", Edition::Public);
    f.put(
        &format!("products/{PK}"),
        json!({
            "key": PK, "name": "p", "owner": "acme", "home_instance": "iot-sh-1", "created_at": 0
        }),
    );
    assert_eq!(f.host("early-1").as_deref(), Some("iot-sh-1.example"));
    f.delete(&format!("products/{PK}"));
    assert_eq!(f.host("early-1"), None, "no product, no home");
}

#[test]
fn region_reply_is_the_operators_endpoint_only() {
    let mut f = Fixture::new();
    let region: RegionId = "eu-central-1".parse().expect("region");
    // Public instances in the region, one sorting first: none of them is the region's answer.
    f.put_instance("aaa-evil", "eu-central-1", Edition::Public);
    f.put_instance("iot-fra-2", "eu-central-1", Edition::Public);
    assert_eq!(f.table.region_reply(&region), None, "no endpoint configured for the region");

    let mut configured = Region {
        id: region.clone(),
        display_name: "Frankfurt".into(),
        latitude: 50.11,
        longitude: 8.68,
        bias_km: 0.0,
        public_endpoint: Some(MqttEndpoint {
            host: "mqtt.eu.example".into(),
            tcp_port: 1883,
            tls_port: None,
        }),
    };
    f.put("regions/eu-central-1", serde_json::to_value(&configured).expect("json"));
    let reply = f.table.region_reply(&region).expect("configured");
    assert_eq!(host_of(&reply), "mqtt.eu.example");
    f.put_instance("aaa-evil-2", "eu-central-1", Edition::Public);
    assert_eq!(host_of(&f.table.region_reply(&region).expect("configured")), "mqtt.eu.example");

    configured.public_endpoint = None;
    f.put("regions/eu-central-1", serde_json::to_value(&configured).expect("json"));
    assert_eq!(f.table.region_reply(&region), None, "unconfigured again");
    assert_eq!(f.table.region_reply(&"us-west-1".parse().expect("region")), None);
}

#[test]
fn undecodable_records_are_skipped() {
    let mut f = Fixture::new();
    f.put(&format!("devices/{PK}/bad-1"), json!({"nonsense": true}));
    f.put("instances/iot-x-1", json!([1, 2]));
    assert_eq!(f.table.device_count(), 0);
    f.put_device("good-1", json!({"kind": "home"}));
    assert_eq!(f.host("good-1").as_deref(), Some("iot-sh-1.example"));
}

#[test]
fn resync_drops_devices_missing_from_the_new_snapshot() {
    let mut f = Fixture::new();
    f.put_device("keep-1", json!({"kind": "home"}));
    f.put_device("gone-1", json!({"kind": "home"}));
    f.writer.begin_resync();
    f.put_device("keep-1", json!({"kind": "home"}));
    f.writer.finish_resync();
    assert_eq!(f.host("keep-1").as_deref(), Some("iot-sh-1.example"));
    assert_eq!(f.host("gone-1"), None);
    assert_eq!(f.table.device_count(), 1);
}

#[tokio::test]
async fn revision_is_published_and_awaitable() {
    let f = Fixture::new();
    assert_eq!(f.table.revision(), 0);
    f.writer.mark_applied(7);
    f.table.caught_up(7).await;
    f.writer.mark_applied(3);
    assert_eq!(f.table.revision(), 7, "the revision never goes back");
}
