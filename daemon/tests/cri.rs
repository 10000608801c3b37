//! The CRI keychain with the real parts: Debian's containerd with its
//! CRI plugin on (`snapshotter = "ringstar"`,
//! `disable_snapshot_annotations = false`) and runc, Debian's
//! docker-registry over TLS with htpasswd, and the
//! `ringstar-snapshotter` binary with `[cri_keychain]` on and no docker
//! config. The test plays kubelet through CRI (Debian ships no kubelet):
//! it pulls through ringstar's image service socket with the
//! credentials a pull secret would give, runs a host-network pod
//! (RunPodSandbox, CreateContainer, StartContainer) and reads the
//! container's output. The registry's access log shows the layers were
//! read by range only: ringstar had the credentials from the CRI call.
//!
//! The registry listens on 127.0.0.1, which both containerd and ringstar
//! speak plain HTTP to by default; each is told `https://` explicitly
//! (a CRI registry mirror, a ringstar resolver mirror).

mod world;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use ringstar_fetcher::{Fetcher, FetcherConfig};
use ringstar_image::{ImageStore, RunConfig, build_image, push_image};
use ringstar_testkit::images::busybox_layers;
use ringstar_testkit::{Registry, RegistryAuth, access_log_entries, write_htpasswd};
use tonic::transport::{Channel, Endpoint};
use world::{estargz, need, wait_for};

const USER: &str = "kube";
const PASSWORD: &str = "pull-secret";

/// A tonic channel to unix socket `path`.
async fn channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap()
}

/// The daemons, stopped at the end in reverse order with SIGINT (so
/// ringstar unmounts its layers: a SIGKILL would leave the mount to the
/// fd keeper for its takeover wait, and the directory's removal would
/// wait on it), killed if they do not exit.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
            if !world::wait_exit(c, Duration::from_secs(20)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

fn containerd_config(d: &Path, registry: &str, pause: &str) -> String {
    let p = |x: &str| d.join(x).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[proxy_plugins.ringstar]
  type = "snapshot"
  address = "{ringstar}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "ringstar"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["https://{registry}"]
  [plugins."io.containerd.grpc.v1.cri".registry.configs."{registry}".tls]
    ca_file = "{ca}"
"#,
        root = p("containerd/root"),
        state = p("containerd/state"),
        sock = p("containerd.sock"),
        ringstar = p("ringstar.sock"),
        cni = p("cni"),
        ca = p("ca.pem"),
    )
}

fn ringstar_config(d: &Path, registry: &str) -> String {
    format!(
        "[cri_keychain]\nenable_keychain = true\nimage_service_path = \"{}\"\nlisten_path = \"{}\"\n\
         [[resolver.host.\"{registry}\".mirrors]]\nhost = \"https://{registry}\"\n\
         [ringstar]\nca_file = \"{}\"\nstore_size = 1073741824\n",
        d.join("containerd.sock").display(),
        d.join("cri.sock").display(),
        d.join("ca.pem").display(),
    )
}

/// Pushes a busybox image as `repo:1` (eStargz), running `cmd`.
fn push(registry: &str, ca: &Path, repo: &str, cmd: &[&str]) -> Vec<String> {
    let tars = busybox_layers(&world::busybox()).unwrap();
    let run = RunConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..RunConfig::default()
    };
    let image = build_image(&tars, &estargz(), &run).unwrap();
    let config = FetcherConfig {
        credentials: Some(ringstar_testkit::static_credentials(
            registry, USER, PASSWORD,
        )),
        ca_file: Some(ca.to_path_buf()),
        ..FetcherConfig::default()
    };
    let fetcher = Fetcher::new(config).unwrap();
    let reference: ringstar_fetcher::Reference = format!("https://{registry}/{repo}:1")
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let resolver = ringstar_fetcher::ResolverConfig::default();
    let mut repository = ringstar_fetcher::Repository::origin_of(&reference, &resolver);
    repository.endpoint.base = format!("https://{registry}");
    let store = ImageStore::Registry {
        fetcher,
        repo: repository,
    };
    push_image(&store, &image, "1").unwrap();
    image.layers.iter().map(|l| l.digest.to_string()).collect()
}

fn auth() -> AuthConfig {
    AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..AuthConfig::default()
    }
}

#[test]
fn kubelet_credentials_reach_the_layers_through_the_cri_proxy() {
    need("containerd");
    need("runc");
    let dir = tempfile::Builder::new()
        .prefix("rs-cri")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    ringstar_testkit::make_certs(d);
    let htpasswd = d.join("htpasswd");
    write_htpasswd(&htpasswd, USER, PASSWORD);
    std::fs::create_dir_all(d.join("storage")).unwrap();
    std::fs::create_dir_all(d.join("cni")).unwrap();
    let registry = Registry::start_full(
        &d.join("storage"),
        Some((&d.join("server.pem"), &d.join("server.key"))),
        Some(&RegistryAuth::Htpasswd { path: htpasswd }),
        Some(&d.join("access.log")),
    );
    let addr = registry.addr.clone();
    let ca = d.join("ca.pem");
    // A pause that stops at SIGTERM (a shell as PID 1 ignores it
    // otherwise, and the sandbox's stop waits for the kill).
    let pause_cmd = "trap 'exit 0' TERM; sleep 3600 & wait";
    push(&addr, &ca, "k8s/pause", &["sh", "-c", pause_cmd]);
    let app_layers = push(&addr, &ca, "team/app", &["cat", "/etc/hello.txt"]);
    let pause = format!("{addr}/k8s/pause:1");
    let app = format!("{addr}/team/app:1");

    std::fs::write(
        d.join("containerd.toml"),
        containerd_config(d, &addr, &pause),
    )
    .unwrap();
    std::fs::write(d.join("ringstar.toml"), ringstar_config(d, &addr)).unwrap();
    let home = d.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut procs = Procs(Vec::new());
    procs.0.push(spawn(
        Command::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"))
            .args(["--address", &d.join("ringstar.sock").display().to_string()])
            .args(["--root", &d.join("ringstar").display().to_string()])
            .args(["--config", &d.join("ringstar.toml").display().to_string()])
            .env("HOME", &home)
            .env_remove("DOCKER_CONFIG"),
        &d.join("ringstar.log"),
    ));
    wait_for("ringstar", Duration::from_secs(20), || {
        d.join("cri.sock").exists()
    });
    procs.0.push(spawn(
        Command::new(need("containerd"))
            .arg("--config")
            .arg(d.join("containerd.toml")),
        &d.join("containerd.log"),
    ));
    wait_for("containerd", Duration::from_secs(20), || {
        d.join("containerd.sock").exists()
    });
    let logs = || {
        let r = |n: &str| std::fs::read_to_string(d.join(n)).unwrap_or_default();
        format!(
            "--- ringstar\n{}\n--- containerd\n{}",
            r("ringstar.log"),
            r("containerd.log")
        )
    };

    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(async {
        let mut images = ImageServiceClient::new(channel(&d.join("cri.sock")).await);
        let mut runtime = RuntimeServiceClient::new(channel(&d.join("containerd.sock")).await);
        for image in [&pause, &app] {
            let pulled = images
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..ImageSpec::default()
                    }),
                    auth: Some(auth()),
                    sandbox_config: None,
                })
                .await;
            assert!(pulled.is_ok(), "PullImage {image}: {pulled:?}\n{}", logs());
        }
        run_pod(&mut runtime, d, &app, &logs).await
    });
    assert!(out.contains("hello from ringstar"), "{out}\n{}", logs());

    // Lazily: the app's layers were read by range, never whole, with the
    // credentials kubelet passed (no docker config anywhere).
    let log = std::fs::read_to_string(d.join("access.log")).unwrap();
    let entries = access_log_entries(&log);
    for digest in &app_layers {
        let gets: Vec<u16> = entries
            .iter()
            .filter(|e| e.method == "GET" && e.path.ends_with(digest))
            .map(|e| e.status)
            .collect();
        assert!(gets.contains(&206), "{digest}: {gets:?}\n{}", logs());
        assert!(!gets.contains(&200), "{digest} downloaded whole: {gets:?}");
    }
    let ringstar_log = std::fs::read_to_string(d.join("ringstar.log")).unwrap();
    assert!(
        ringstar_log.contains("credentials from kubelet's PullImage kept"),
        "{ringstar_log}"
    );
    assert!(
        ringstar_log.contains("remote_snapshot_prepared=true"),
        "{ringstar_log}"
    );
}

/// A host-network pod running `image` once: its output (the CRI log).
async fn run_pod(
    runtime: &mut RuntimeServiceClient<Channel>,
    d: &Path,
    image: &str,
    logs: &dyn Fn() -> String,
) -> String {
    let pod_logs: PathBuf = d.join("pod-logs");
    std::fs::create_dir_all(&pod_logs).unwrap();
    let sandbox = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "lazy".into(),
            uid: "lazy-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: pod_logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let pod = runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", logs()))
        .into_inner()
        .pod_sandbox_id;
    let created = runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..ImageSpec::default()
                }),
                log_path: "app.log".into(),
                ..ContainerConfig::default()
            }),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", logs()))
        .into_inner()
        .container_id;
    runtime
        .start_container(StartContainerRequest {
            container_id: created.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", logs()));
    let started = Instant::now();
    loop {
        let status = runtime
            .container_status(ContainerStatusRequest {
                container_id: created.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == ContainerState::ContainerExited as i32 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the container never exited\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = std::fs::read_to_string(pod_logs.join("app.log")).unwrap_or_default();
    let _ = runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await;
    let _ = runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await;
    out
}
