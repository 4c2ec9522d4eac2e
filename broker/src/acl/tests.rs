use meridian_registry::ids::{InstanceId, ProductKey};

use super::*;
use crate::view::ProductEntry;

const PK: &str = "a13FN5TplKq";
const DN: &str = "dev1";
/// Another product, owned by another account in the application tests.
const OTHER_PK: &str = "b24GO6UqmLr";

fn device() -> Principal {
    Principal::Device(DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: DN.parse().unwrap(),
    })
}

fn standard() -> Principal {
    Principal::Standard { username: Some("integration".into()) }
}

fn application(account: &str) -> Principal {
    Principal::Application { account: account.parse().unwrap() }
}

/// `PK` is owned by `acme`, `OTHER_PK` by `rival`.
fn view_with_products() -> RegistryView {
    let view = RegistryView::default();
    let home: InstanceId = "iot-1".parse().unwrap();
    for (product, owner) in [(PK, "acme"), (OTHER_PK, "rival")] {
        let entry = ProductEntry { owner: owner.parse().unwrap(), home: home.clone() };
        view.apply_product(product.parse::<ProductKey>().unwrap(), entry);
    }
    view
}

/// Substitutes `{pk}`, `{dn}` and `{other}` in a topic template.
fn t(template: &str) -> String {
    template.replace("{pk}", PK).replace("{dn}", DN).replace("{other}", OTHER_PK)
}

#[test]
fn device_publishes_on_its_own_topics() {
    let view = RegistryView::default();
    let device = device();
    for topic in [
        "/sys/{pk}/{dn}/thing/event/property/post",
        "/sys/{pk}/{dn}/thing/service/property/set_reply",
        "/sys/{pk}/{dn}/thing/bootstrap/notify_reply",
        "/sys/{pk}/{dn}/rrpc/request/1",
        "/sys/{pk}/{dn}/rrpc/response/1",
        "/{pk}/{dn}/user/anything",
        "/{pk}/{dn}/user/a/b/c",
        "/{pk}/{dn}/update",
        "/{pk}/{dn}/get",
        "/ext/rrpc/123/sys/{pk}/{dn}/thing/service/x",
        "/ext/rrpc/123/{pk}/{dn}/user/x",
        "/shadow/update/{pk}/{dn}",
        "/shadow/get/{pk}/{dn}",
        "/ota/device/inform/{pk}/{dn}",
        "/ota/device/upgrade/{pk}/{dn}",
        "/ota/device/progress/{pk}/{dn}",
    ] {
        assert!(device.may_publish(&t(topic), &view), "publish {topic}");
    }
}

#[test]
fn device_subscribes_to_its_own_topics() {
    let view = RegistryView::default();
    let device = device();
    for filter in [
        "/sys/{pk}/{dn}/thing/event/property/post",
        "/sys/{pk}/{dn}/thing/service/property/set",
        "/sys/{pk}/{dn}/thing/#",
        "/sys/{pk}/{dn}/thing/+/property/set",
        "/sys/{pk}/{dn}/rrpc/request/1",
        "/sys/{pk}/{dn}/rrpc/request/+",
        "/sys/{pk}/{dn}/rrpc/#",
        "/sys/{pk}/{dn}/#",
        "/{pk}/{dn}/user/anything",
        "/{pk}/{dn}/user/#",
        "/{pk}/{dn}/user/+",
        "/{pk}/{dn}/update",
        "/{pk}/{dn}/get",
        "/ext/rrpc/+/sys/{pk}/{dn}/thing/service/#",
        "/ext/rrpc/123/sys/{pk}/{dn}/thing/service/x",
        "/shadow/update/{pk}/{dn}",
        "/shadow/get/{pk}/{dn}",
        "/ota/device/inform/{pk}/{dn}",
        "/ota/device/upgrade/{pk}/{dn}",
        "/broadcast/{pk}/x",
        "/broadcast/{pk}/#",
        "/broadcast/{pk}/a/+/c",
    ] {
        assert!(device.may_subscribe(&t(filter), &view), "subscribe {filter}");
    }
}

#[test]
fn device_may_not_publish_elsewhere() {
    let view = RegistryView::default();
    let device = device();
    for topic in [
        // Another device of its product, another product.
        "/sys/{pk}/dev2/thing/event/property/post",
        "/sys/{other}/{dn}/thing/event/property/post",
        "/{pk}/dev2/user/anything",
        "/{other}/{dn}/user/anything",
        "/{pk}/dev2/update",
        "/shadow/update/{pk}/dev2",
        "/shadow/update/{other}/{dn}",
        "/ota/device/inform/{pk}/dev2",
        "/ota/device/inform/{other}/{dn}",
        "/ext/rrpc/123/sys/{pk}/dev2/thing/service/x",
        // Outside the listed shapes under its own prefix.
        "/sys/{pk}/{dn}/other/x",
        "/sys/{pk}/{dn}/thing",
        "/sys/{pk}/{dn}",
        "/{pk}/{dn}/other",
        "/{pk}/{dn}/user",
        "/{pk}/{dn}",
        "/{pk}/{dn}/update/more",
        "/shadow/update/{pk}/{dn}/more",
        "/ota/device/inform/{pk}",
        // Subscribe-only broadcast.
        "/broadcast/{pk}/x",
        // RRPC wrapping: no nesting, no foreign topic, something must be wrapped.
        "/ext/rrpc/1/ext/rrpc/2/sys/{pk}/{dn}/thing/service/x",
        "/ext/rrpc/1/broadcast/{pk}/x",
        "/ext/rrpc/1",
        "/ext/other/1/sys/{pk}/{dn}/thing/x",
        // No leading slash, or nothing at all.
        "sys/{pk}/{dn}/thing/event/property/post",
        "{pk}/{dn}/user/x",
        "/",
        "",
    ] {
        assert!(!device.may_publish(&t(topic), &view), "publish {topic}");
    }
}

#[test]
fn device_may_not_subscribe_elsewhere() {
    let view = RegistryView::default();
    let device = device();
    for filter in [
        "#",
        "/#",
        "+/#",
        "/sys/#",
        "/sys/+/#",
        "/sys/{pk}/#",
        "/sys/{pk}/+/thing/#",
        "/sys/+/{dn}/thing/#",
        "/sys/{pk}/dev2/thing/#",
        "/sys/{other}/{dn}/thing/#",
        "/sys/{pk}/{dn}/+",
        "/sys/{pk}/{dn}/+/x",
        "/{pk}/+/user/#",
        "/+/{dn}/user/#",
        "/{pk}/{dn}/#",
        "/{pk}/{dn}/+",
        "/{pk}/dev2/user/#",
        "/ext/rrpc/#",
        "/ext/rrpc/+/#",
        "/ext/rrpc/+/sys/{pk}/+/thing/service/#",
        "/ext/rrpc/+/sys/{pk}/dev2/thing/service/#",
        "/ext/rrpc/1/ext/rrpc/2/sys/{pk}/{dn}/thing/service/x",
        "/ext/rrpc/+/ext/rrpc/+/sys/{pk}/{dn}/thing/service/#",
        "/shadow/+/{pk}/{dn}",
        "/shadow/#",
        "/shadow/update/{pk}/+",
        "/shadow/update/+/{dn}",
        "/shadow/update/{pk}/dev2",
        "/ota/device/+/{pk}/{dn}",
        "/ota/device/#",
        "/ota/device/inform/{pk}/+",
        "/broadcast/+/#",
        "/broadcast/#",
        "/broadcast/{other}/#",
        "/broadcast/{pk}",
    ] {
        assert!(!device.may_subscribe(&t(filter), &view), "subscribe {filter}");
    }
}

#[test]
fn standard_clients_may_use_any_topic() {
    let view = RegistryView::default();
    for principal in [standard(), Principal::Standard { username: None }] {
        for topic in ["#", "a/b", "/sys/{pk}/{dn}/thing/x", "$SYS/uptime", "/broadcast/{pk}/x"] {
            assert!(principal.may_publish(&t(topic), &view), "publish {topic}");
            assert!(principal.may_subscribe(&t(topic), &view), "subscribe {topic}");
        }
    }
}

#[test]
fn application_uses_topics_of_its_own_products() {
    let view = view_with_products();
    let app = application("acme");
    for filter in [
        "/{pk}/+/user/#",
        "/{pk}/dev1/user/x",
        "/{pk}/+/update",
        "/sys/{pk}/+/thing/event/#",
        "/sys/{pk}/dev1/thing/service/property/set",
        "/sys/{pk}/#",
        "/ext/rrpc/+/sys/{pk}/+/thing/service/#",
        "/shadow/update/{pk}/+",
        "/ota/device/upgrade/{pk}/dev1",
        "/broadcast/{pk}/x",
        "/broadcast/{pk}/#",
    ] {
        assert!(app.may_subscribe(&t(filter), &view), "subscribe {filter}");
    }
    for topic in [
        "/sys/{pk}/dev1/thing/service/property/set",
        "/sys/{pk}/dev1/rrpc/request/7",
        "/{pk}/dev1/user/downlink",
        "/{pk}/dev1/get",
        "/ext/rrpc/9/sys/{pk}/dev1/thing/service/x",
        "/shadow/get/{pk}/dev1",
        "/ota/device/upgrade/{pk}/dev1",
        "/broadcast/{pk}/all",
    ] {
        assert!(app.may_publish(&t(topic), &view), "publish {topic}");
    }
}

#[test]
fn application_may_not_use_other_products_or_wildcard_products() {
    let view = view_with_products();
    let app = application("acme");
    for topic in [
        // Another account's product.
        "/{other}/+/user/#",
        "/sys/{other}/+/thing/event/#",
        "/sys/{other}/dev1/thing/service/property/set",
        "/ext/rrpc/+/sys/{other}/+/thing/service/#",
        "/shadow/update/{other}/+",
        "/ota/device/upgrade/{other}/dev1",
        "/broadcast/{other}/#",
        // A product nobody has (well formed, unknown).
        "/sys/c35HP7VrnMs/+/thing/#",
        // A wildcard where the product goes.
        "#",
        "/#",
        "/+/+/user/#",
        "/+/dev1/user/x",
        "/sys/+/+/thing/#",
        "/sys/#",
        "/ext/rrpc/+/sys/+/+/thing/#",
        "/shadow/update/+/dev1",
        "/ota/device/upgrade/#",
        "/broadcast/+/x",
        "/broadcast/#",
        // Not a product topic at all.
        "a/b",
        "/",
        "",
    ] {
        assert!(!app.may_subscribe(&t(topic), &view), "subscribe {topic}");
        if !topic.contains(['+', '#']) {
            assert!(!app.may_publish(&t(topic), &view), "publish {topic}");
        }
    }

    // The same product is fine for its owner and nothing for an account without products.
    let rival = application("rival");
    assert!(rival.may_subscribe(&t("/{other}/+/user/#"), &view));
    assert!(!rival.may_subscribe(&t("/{pk}/+/user/#"), &view));
    let nobody = application("nobody");
    assert!(!nobody.may_subscribe(&t("/{pk}/+/user/#"), &view));
    assert!(!nobody.may_publish(&t("/sys/{pk}/dev1/thing/x"), &view));
}

#[test]
fn application_needs_the_product_in_the_view() {
    // An empty view (nothing from the feed yet) grants nothing.
    let view = RegistryView::default();
    let app = application("acme");
    assert!(!app.may_subscribe(&t("/{pk}/+/user/#"), &view));
    assert!(!app.may_publish(&t("/sys/{pk}/dev1/thing/x"), &view));
}

/// `view_with_products`, plus device `{pk}/dev1`, transferred from `acme` to `buyer`, and
/// `{pk}/dev2`, still `acme`'s.
fn view_with_transferred_device() -> RegistryView {
    let view = view_with_products();
    for (name, owner) in [("dev1", "buyer"), ("dev2", "acme")] {
        let key =
            DeviceKey { product_key: PK.parse().unwrap(), device_name: name.parse().unwrap() };
        let entry = crate::view::DeviceEntry {
            secret: meridian_registry::secret::DeviceSecret::new("secret-of-a-device").unwrap(),
            owner: owner.parse().unwrap(),
            status: meridian_registry::model::DeviceStatus::Online,
            placement: meridian_registry::model::Placement::Home,
        };
        view.apply_device(key, entry);
    }
    view
}

#[test]
fn application_access_follows_the_device_owner() {
    let view = view_with_transferred_device();
    let (source, destination) = (application("acme"), application("buyer"));
    // The destination reaches its device by name, not the product's other devices nor the
    // product as a whole.
    for topic in ["/{pk}/dev1/user/x", "/sys/{pk}/dev1/thing/event/post", "/shadow/get/{pk}/dev1"] {
        assert!(destination.may_subscribe(&t(topic), &view), "{topic}");
        assert!(destination.may_publish(&t(topic), &view), "{topic}");
        assert!(!source.may_subscribe(&t(topic), &view), "{topic}");
        assert!(!source.may_publish(&t(topic), &view), "{topic}");
    }
    for filter in ["/{pk}/dev2/user/#", "/{pk}/+/user/#", "/sys/{pk}/#", "/broadcast/{pk}/#"] {
        assert!(!destination.may_subscribe(&t(filter), &view), "{filter}");
        assert!(source.may_subscribe(&t(filter), &view), "{filter}");
    }
    // The source keeps its wildcard subscription, but deliveries of the transferred device's
    // messages stop; the destination receives them.
    let app = Origin::Application("acme".parse().unwrap());
    let from = Origin::Broker;
    assert!(!source.may_receive(&t("/{pk}/dev1/user/x"), &from, &view));
    assert!(source.may_receive(&t("/{pk}/dev2/user/x"), &from, &view));
    assert!(destination.may_receive(&t("/{pk}/dev1/user/x"), &from, &view));
    assert!(!destination.may_receive(&t("/{pk}/dev2/user/x"), &from, &view));
    assert!(!destination.may_receive(&t("/broadcast/{pk}/all"), &from, &view));
    // One account's application messages never reach another account's application client,
    // on any topic: not the destination's downlink to the source, nor the reverse.
    let buyer_app = Origin::Application("buyer".parse().unwrap());
    assert!(!source.may_receive(&t("/{pk}/dev2/user/x"), &buyer_app, &view));
    assert!(!destination.may_receive(&t("/{pk}/dev1/user/x"), &app, &view));
    assert!(destination.may_receive(&t("/{pk}/dev1/user/x"), &buyer_app, &view));
    // Devices and standard clients are bounded by their subscriptions, and a device by who
    // sent the message: an application client only while its account owns the device.
    assert!(device().may_receive(&t("/sys/{pk}/{dn}/thing/x"), &from, &view));
    assert!(standard().may_receive("anything/at/all", &app, &view));
    let transferred = Principal::Device(DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: "dev1".parse().unwrap(),
    });
    let kept = Principal::Device(DeviceKey {
        product_key: PK.parse().unwrap(),
        device_name: "dev2".parse().unwrap(),
    });
    let buyer = Origin::Application("buyer".parse().unwrap());
    for topic in ["/broadcast/{pk}/all", "/sys/{pk}/dev1/thing/service/property/set"] {
        assert!(!transferred.may_receive(&t(topic), &app, &view), "{topic}");
        assert!(transferred.may_receive(&t(topic), &buyer, &view), "{topic}");
        assert!(transferred.may_receive(&t(topic), &from, &view), "{topic}");
    }
    assert!(kept.may_receive(&t("/broadcast/{pk}/all"), &app, &view));
    assert!(!kept.may_receive(&t("/broadcast/{pk}/all"), &buyer, &view));
}

/// The implicit downlink carries what the platform sends a device, never the device's uplink.
#[test]
fn the_implicit_route_carries_downlink_topics_only() {
    let downlink = [
        "/sys/{pk}/{dn}",
        "/sys/{pk}/{dn}/thing/service/property/set",
        "/sys/{pk}/{dn}/thing/service/property/get",
        "/sys/{pk}/{dn}/thing/service/reboot",
        "/sys/{pk}/{dn}/thing/event/property/post_reply",
        "/sys/{pk}/{dn}/thing/event/alarm/post_reply",
        "/sys/{pk}/{dn}/thing/deviceinfo/update_reply",
        "/sys/{pk}/{dn}/thing/config/get_reply",
        "/sys/{pk}/{dn}/thing/config/push",
        "/sys/{pk}/{dn}/thing/bootstrap/notify",
        "/sys/{pk}/{dn}/thing/model/down_raw",
        "/sys/{pk}/{dn}/thing/model/up_raw_reply",
        "/sys/{pk}/{dn}/thing/disable",
        "/sys/{pk}/{dn}/rrpc/request/12345",
    ];
    let uplink = [
        "/sys/{pk}/{dn}/thing/event/property/post",
        "/sys/{pk}/{dn}/thing/event/alarm/post",
        "/sys/{pk}/{dn}/thing/event/property/history/post",
        "/sys/{pk}/{dn}/thing/service/property/set_reply",
        "/sys/{pk}/{dn}/thing/service/reboot_reply",
        "/sys/{pk}/{dn}/thing/bootstrap/notify_reply",
        "/sys/{pk}/{dn}/thing/config/push_reply",
        "/sys/{pk}/{dn}/thing/config/get",
        "/sys/{pk}/{dn}/thing/deviceinfo/update",
        "/sys/{pk}/{dn}/thing/model/up_raw",
        "/sys/{pk}/{dn}/thing/model/down_raw_reply",
        "/sys/{pk}/{dn}/thing/disable_reply",
        "/sys/{pk}/{dn}/rrpc/response/12345",
    ];
    let session = device_session_id(PK, DN);
    for topic in downlink.map(t) {
        assert!(carries_downlink(&topic), "{topic}");
        assert_eq!(downlink_session(&topic).as_deref(), Some(session.as_str()), "{topic}");
    }
    for topic in uplink.map(t) {
        assert!(!carries_downlink(&topic), "{topic}");
        assert_eq!(downlink_session(&topic), None, "{topic}");
    }
    assert!(!carries_downlink(&t("/{pk}/{dn}/user/get")), "outside /sys");
}

#[test]
fn only_devices_have_implicit_filters() {
    assert_eq!(device().implicit_filters(), vec![t("/sys/{pk}/{dn}/#")]);
    assert!(standard().implicit_filters().is_empty());
    assert!(application("acme").implicit_filters().is_empty());
}

#[test]
fn implicit_filter_is_one_the_device_may_hold() {
    let view = RegistryView::default();
    let device = device();
    for filter in device.implicit_filters() {
        assert!(device.may_subscribe(&filter, &view), "{filter}");
        assert!(crate::topic::validate_filter(&filter, Profile::DEVICE.max_topic_len).is_ok());
    }
}

#[test]
fn device_accessor() {
    let Principal::Device(key) = device() else { unreachable!() };
    assert_eq!(device().device(), Some(&key));
    assert_eq!(standard().device(), None);
    assert_eq!(application("acme").device(), None);
}

#[test]
fn profiles() {
    let device = Profile::DEVICE;
    assert_eq!(device.max_payload, 256 * 1024);
    assert_eq!(device.max_topic_len, 128);
    assert_eq!(device.max_subscriptions, 100);
    assert_eq!(device.max_qos, 1);
    assert!(!device.retain && !device.will);

    let standard = Profile::standard(1 << 20, 1000);
    assert_eq!(standard.max_payload, 1 << 20);
    assert_eq!(standard.max_subscriptions, 1000);
    assert_eq!(standard.max_qos, 2);
    assert!(standard.retain && standard.will);
}
