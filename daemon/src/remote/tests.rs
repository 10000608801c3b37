use super::*;
use ringstar_layerfs::resolve::LayerSource;
use std::collections::BTreeMap;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const T: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn cri_labels_win_and_others_are_listed() {
    let l = labels(&[
        (labels::CRI_REF, "127.0.0.1:5000/a/b:latest"),
        (labels::CRI_DIGEST, D1),
        (labels::STARGZ_REF, "other.example/x:1"),
        (labels::CRI_LAYERS, &format!("{D1},{D2}")),
        (labels::TOC_DIGEST, T),
    ]);
    let w = wanted(&l, &RemoteSettings::default()).unwrap();
    assert_eq!(w.source.reference.host, "127.0.0.1:5000");
    assert_eq!(w.source.digest.to_string(), D1);
    assert_eq!(w.source.toc_digest.unwrap().to_string(), T);
    assert!(w.verify);
    assert_eq!(w.others.len(), 1);
    assert_eq!(w.others[0].digest.to_string(), D2);
}

#[test]
fn verification_rules() {
    let base = [
        (labels::STARGZ_REF, "127.0.0.1:5000/a/b:latest"),
        (labels::STARGZ_DIGEST, D1),
    ];
    let s = RemoteSettings::default();
    assert!(
        wanted(&labels(&base), &s)
            .unwrap_err()
            .to_string()
            .contains("TOC")
    );
    let mut skip = base.to_vec();
    skip.push((labels::SKIP_VERIFY, "true"));
    assert!(wanted(&labels(&skip), &s).is_err());
    let allow = RemoteSettings {
        allow_no_verification: true,
        ..RemoteSettings::default()
    };
    assert!(!wanted(&labels(&skip), &allow).unwrap().verify);
    let off = RemoteSettings {
        disable_verification: true,
        ..RemoteSettings::default()
    };
    assert!(!wanted(&labels(&base), &off).unwrap().verify);
    assert!(wanted(&labels(&[(labels::STARGZ_DIGEST, D1)]), &s).is_err());
    let mut bad = base.to_vec();
    bad.push((labels::TOC_DIGEST, "sha256:zz"));
    assert!(wanted(&labels(&bad), &s).is_err());
}

/// A layer is known by where its bytes come from and what they are:
/// an image declaring a victim's layer digest (even its first 96
/// bits, or all of it) gets another layer, served from its own
/// registry. Before, the name was the digest's first 24 hex digits.
#[test]
fn layers_are_named_by_source_and_digest() {
    let source = |r: &str, d: &str| LayerSource {
        reference: r.parse().unwrap(),
        digest: d.parse().unwrap(),
        size: None,
        toc_digest: None,
    };
    let victim = source("registry.example/team/app:v1", D1);
    let name = victim.layer_name();
    assert_eq!(name.len(), 32);
    assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        source("registry.example/team/app:v2", D1).layer_name(),
        name,
        "tags share"
    );
    assert_ne!(source("evil.example/team/app:v1", D1).layer_name(), name);
    assert_ne!(
        source("registry.example/evil/app:v1", D1).layer_name(),
        name
    );
    let near = format!("sha256:{}{}", &D1[7..31], "2".repeat(40));
    assert_ne!(
        source("registry.example/team/app:v1", &near).layer_name()[..24],
        name[..24]
    );
    assert_ne!(
        source("registry.example/team/app:v1", D2).layer_name(),
        name
    );
}
