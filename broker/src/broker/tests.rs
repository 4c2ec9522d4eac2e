#![allow(clippy::unwrap_used)]

use super::*;

fn device(pk: &str, dn: &str) -> DeviceKey {
    DeviceKey { product_key: pk.parse().unwrap(), device_name: dn.parse().unwrap() }
}

/// A batch of owner changes and deletions groups into one scope per former owner, and each
/// scope holds exactly the topics of its devices and products' broadcasts.
#[test]
fn forgets_group_a_batch_per_former_owner() {
    let (acme, bravo): (AccountId, AccountId) = ("acme".parse().unwrap(), "bravo".parse().unwrap());
    let mut forgets = Forgets::default();
    for n in 0..100 {
        forgets.device(acme.clone(), &device("a1B2c3D4e5F", &format!("lamp-{n:04}")));
    }
    forgets.device(bravo.clone(), &device("a1B2c3D4e5F", "fan-0001"));
    forgets.product(acme.clone(), "a1B2c3D4e5F");
    assert_eq!(forgets.by_owner.len(), 2, "one scan per former owner");

    let acme = &forgets.by_owner[&acme];
    assert!(acme.holds("/sys/a1B2c3D4e5F/lamp-0042/thing/service/property/set"));
    assert!(acme.holds("/a1B2c3D4e5F/lamp-0000/user/get"));
    assert!(acme.holds("/shadow/update/a1B2c3D4e5F/lamp-0099"));
    assert!(acme.holds("/broadcast/a1B2c3D4e5F/all"));
    assert!(!acme.holds("/sys/a1B2c3D4e5F/lamp-0100/thing/x"), "not in the batch");
    assert!(!acme.holds("/sys/a1B2c3D4e5F/fan-0001/thing/x"), "bravo's");
    assert!(!acme.holds("/sys/zzzzzzzzzzz/lamp-0042/thing/x"), "another product");
    assert!(!acme.holds("/broadcast/zzzzzzzzzzz/all"));
    let bravo = &forgets.by_owner[&bravo];
    assert!(bravo.holds("/sys/a1B2c3D4e5F/fan-0001/thing/x"));
    assert!(!bravo.holds("/broadcast/a1B2c3D4e5F/all"));
}
