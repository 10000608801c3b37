//! The CRI keychain (`[cri_keychain]`) with the real parts
//! (tests/cri_world): the test plays kubelet, pulling through ringstar's
//! image service socket with the credentials a pull secret gives, and
//! runs a pod. ringstar has no docker config: the layers it reads by
//! range were read with the credentials of the CRI call. A real
//! Prometheus scrapes ringstar's metrics during the flow.

mod cri_world;
mod world;

use cri_world::CriWorld;
use ringstar_testkit::prometheus::Prometheus;

#[test]
fn kubelet_credentials_reach_the_layers_through_the_cri_proxy() {
    let metrics = format!("127.0.0.1:{}", ringstar_testkit::free_port());
    let w = CriWorld::start(|d| {
        format!(
            "metrics_address = \"{metrics}\"\n\
             [cri_keychain]\nenable_keychain = true\nimage_service_path = \"{}\"\nlisten_path = \"{}\"\n",
            d.join("containerd.sock").display(),
            d.join("cri.sock").display(),
        )
    });
    // A real Prometheus scrapes ringstar during the flow.
    let prometheus = Prometheus::start(&world::need("prometheus"), &metrics);
    let socket = w.dir.path().join("cri.sock");
    world::wait_for("the CRI socket", std::time::Duration::from_secs(20), || {
        socket.exists()
    });
    let out = w.pull_and_run(&socket);
    assert!(out.contains("hello from ringstar"), "{out}\n{}", w.logs());
    w.assert_lazy();
    assert!(
        w.ringstar_log()
            .contains("credentials from kubelet's PullImage kept"),
        "{}",
        w.ringstar_log()
    );
    // Its counters show the pod's reads: the files looked up and
    // opened, the layer bytes fetched, the registry's requests.
    assert!(prometheus.value("ringstar_fuse_requests_total{operation=\"OPEN\"}") > 0.0);
    assert!(prometheus.value("ringstar_fuse_requests_total{operation=\"LOOKUP\"}") > 0.0);
    assert!(prometheus.value("sum(stargz_fs_layer_fetched_size_bytes)") > 0.0);
    assert!(prometheus.value("sum(ringstar_registry_requests_total)") > 0.0);
}
