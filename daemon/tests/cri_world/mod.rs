//! The real world of the Kubernetes tests: Debian's containerd with its
//! CRI plugin on (`snapshotter = "ringstar"`,
//! `disable_snapshot_annotations = false`) and runc, Debian's
//! docker-registry over TLS with htpasswd (access log kept), and the
//! `ringstar-snapshotter` binary with no docker config. Debian ships no
//! kubelet: the tests play it, speaking CRI themselves.
//!
//! The registry listens on 127.0.0.1, which both containerd and ringstar
//! speak plain HTTP to by default; each is told `https://` explicitly
//! (a CRI registry mirror, a ringstar resolver mirror).
#![allow(dead_code)]

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

use crate::world::{self, estargz, need, wait_for};

pub const USER: &str = "kube";
pub const PASSWORD: &str = "pull-secret";

/// A tonic channel to unix socket `path`.
pub async fn channel(path: &Path) -> Channel {
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
pub struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(c.id().to_string())
                .status();
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

pub fn containerd_config(d: &Path, registry: &str, pause: &str) -> String {
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

/// ringstar's config: the registry over https, its CA (the keychain's
/// section is the test's).
pub fn ringstar_config(d: &Path, registry: &str) -> String {
    format!(
        "[[resolver.host.\"{registry}\".mirrors]]\nhost = \"https://{registry}\"\n\
         [ringstar]\nca_file = \"{}\"\nstore_size = 1073741824\n",
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

pub fn auth() -> AuthConfig {
    AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..AuthConfig::default()
    }
}

/// A registry with the pause and app images, containerd and ringstar.
pub struct CriWorld {
    pub registry: Registry,
    pub app: String,
    pub app_layers: Vec<String>,
    pub pause: String,
    procs: Procs,
    /// Last: removed once the daemons have stopped.
    pub dir: tempfile::TempDir,
}

impl CriWorld {
    /// Starts it all; ringstar's config is `ringstar_config` plus what
    /// `extra` says given the world's directory (the keychain's section).
    pub fn start(extra: impl Fn(&Path) -> String) -> CriWorld {
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
        std::fs::write(
            d.join("containerd.toml"),
            containerd_config(d, &addr, &pause),
        )
        .unwrap();
        // The test's part first: it may have top-level keys.
        let config = format!("{}{}", extra(d), ringstar_config(d, &addr));
        std::fs::write(d.join("ringstar.toml"), config).unwrap();
        let home = d.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut procs = Procs(Vec::new());
        procs.0.push(spawn(
            Command::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"))
                .args(["--address", &d.join("ringstar.sock").display().to_string()])
                .args(["--root", &d.join("ringstar").display().to_string()])
                .args(["--config", &d.join("ringstar.toml").display().to_string()])
                .env("HOME", &home)
                .env_remove("DOCKER_CONFIG")
                .env_remove("KUBECONFIG"),
            &d.join("ringstar.log"),
        ));
        wait_for("ringstar", Duration::from_secs(20), || {
            d.join("ringstar.sock").exists()
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
        CriWorld {
            app: format!("{addr}/team/app:1"),
            pause,
            registry,
            app_layers,
            procs,
            dir,
        }
    }

    pub fn logs(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- ringstar\n{}\n--- containerd\n{}",
            r("ringstar.log"),
            r("containerd.log")
        )
    }

    pub fn ringstar_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ringstar.log")).unwrap_or_default()
    }

    /// Pulls the pause and app images (with the pull secret's
    /// credentials) through the image service at `socket`, then runs the
    /// app in a host-network pod: its output.
    pub fn pull_and_run(&self, socket: &Path) -> String {
        let d = self.dir.path();
        let logs = || self.logs();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut images = ImageServiceClient::new(channel(socket).await);
            let mut runtime = RuntimeServiceClient::new(channel(&d.join("containerd.sock")).await);
            for image in [&self.pause, &self.app] {
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
            run_pod(&mut runtime, d, &self.app, &logs).await
        })
    }

    /// The app's layers were read by range, never whole, and ringstar
    /// served them as remote snapshots.
    pub fn assert_lazy(&self) {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        let entries = access_log_entries(&log);
        for digest in &self.app_layers {
            let gets: Vec<u16> = entries
                .iter()
                .filter(|e| e.method == "GET" && e.path.ends_with(digest))
                .map(|e| e.status)
                .collect();
            assert!(gets.contains(&206), "{digest}: {gets:?}\n{}", self.logs());
            assert!(!gets.contains(&200), "{digest} downloaded whole: {gets:?}");
        }
        let log = self.ringstar_log();
        assert!(log.contains("remote_snapshot_prepared=true"), "{log}");
    }
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
