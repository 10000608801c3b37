//! The CRI keychain (`[cri_keychain]`) with the real parts
//! (tests/cri_world): the test plays kubelet, pulling through ringstar's
//! image service socket with the credentials a pull secret gives, and
//! runs a pod. ringstar has no docker config: the layers it reads by
//! range were read with the credentials of the CRI call.

mod cri_world;
mod world;

use cri_world::CriWorld;

#[test]
fn kubelet_credentials_reach_the_layers_through_the_cri_proxy() {
    let w = CriWorld::start(|d| {
        format!(
            "[cri_keychain]\nenable_keychain = true\nimage_service_path = \"{}\"\nlisten_path = \"{}\"\n",
            d.join("containerd.sock").display(),
            d.join("cri.sock").display(),
        )
    });
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
}
