//! The snapshots gRPC API with containerd's semantics, spoken to the
//! `ringstar-snapshotter` binary over its unix socket as containerd's
//! proxy plugin does: every RPC, the error codes containerd acts on,
//! mount shapes, filters, labels, restart, and the remote-snapshot
//! handshake against Debian's docker-registry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Code, Status};
use ringstar_image::{LayerFormat, RunConfig, build_image};
use ringstar_testkit::Registry;
use ringstar_testkit::images::TarBuilder;

struct Daemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("rs-grpc")
            .tempdir_in("/tmp")
            .unwrap();
        let mut d = Daemon { dir, child: None };
        d.spawn();
        d
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("config.toml");
        std::fs::write(
            &config,
            "[resolver]\nrequest_timeout_sec = 2\n[blob]\nmax_retries = 1\n",
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let _ = std::fs::remove_file(self.socket());
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"))
                .arg("--root")
                .arg(self.root())
                .arg("--address")
                .arg(self.socket())
                .arg("--config")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        while !self.socket().exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self, sig: &str) {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .unwrap();
        let started = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(20), "did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    async fn client(&self) -> SnapshotsClient<Channel> {
        let path = self.socket();
        let channel = Endpoint::try_from("http://ringstar.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(path.clone())
            }))
            .await
            .unwrap();
        SnapshotsClient::new(channel)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop("INT");
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
    l: HashMap<String, String>,
) -> Result<Vec<Mount>, Status> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: "ringstar".into(),
        key: key.into(),
        parent: parent.into(),
        labels: l,
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn view(c: &mut SnapshotsClient<Channel>, key: &str, parent: &str) -> Vec<Mount> {
    c.view(ViewSnapshotRequest {
        snapshotter: "ringstar".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .mounts
}

async fn commit(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    key: &str,
    l: HashMap<String, String>,
) -> Result<(), Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: "ringstar".into(),
        name: name.into(),
        key: key.into(),
        labels: l,
    })
    .await
    .map(|_| ())
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<Info, Status> {
    c.stat(StatSnapshotRequest {
        snapshotter: "ringstar".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
}

async fn remove(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<(), Status> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: "ringstar".into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

async fn list(c: &mut SnapshotsClient<Channel>, filters: &[&str]) -> Vec<String> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: "ringstar".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        names.extend(msg.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    r.expect_err("expected an error").code()
}

fn option<'a>(m: &'a Mount, prefix: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_snapshots_follow_containerd_semantics() {
    let mut d = Daemon::start();
    let mut c = d.client().await;
    let snaps = d.root().join("snapshots");

    // The first layer: a bind mount of its own fs dir.
    let m = prepare(&mut c, "a", "", labels(&[("k", "v")]))
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, ["rw", "rbind"]);
    let a_fs = PathBuf::from(&m[0].source);
    assert!(a_fs.starts_with(&snaps) && a_fs.ends_with("fs"), "{a_fs:?}");
    assert_eq!(
        code(prepare(&mut c, "a", "", HashMap::new()).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(prepare(&mut c, "b", "nope", HashMap::new()).await),
        Code::NotFound
    );
    assert_eq!(
        code(prepare(&mut c, "b", "a", HashMap::new()).await),
        Code::InvalidArgument
    );
    let info = stat(&mut c, "a").await.unwrap();
    assert_eq!(info.kind, Kind::Active as i32);
    assert_eq!(info.labels["k"], "v");

    // Files written into it are what Commit records.
    std::fs::write(a_fs.join("file"), vec![7u8; 10_000]).unwrap();
    let usage = c
        .usage(UsageRequest {
            snapshotter: String::new(),
            key: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.size >= 10_000 && usage.inodes == 2, "{usage:?}");
    commit(&mut c, "base", "a", labels(&[("c", "1")]))
        .await
        .unwrap();
    assert_eq!(code(stat(&mut c, "a").await), Code::NotFound);
    let base = stat(&mut c, "base").await.unwrap();
    assert_eq!(base.kind, Kind::Committed as i32);
    assert_eq!(base.labels, labels(&[("c", "1")]));
    assert_eq!(
        code(commit(&mut c, "x", "base", HashMap::new()).await),
        Code::FailedPrecondition
    );
    let usage = c
        .usage(UsageRequest {
            snapshotter: String::new(),
            key: "base".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(usage.size >= 10_000, "{usage:?}");

    // An active child: overlay on the parent, with its own upper/work.
    let m = prepare(&mut c, "c", "base", HashMap::new()).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(option(&m[0], "lowerdir="), Some(a_fs.to_str().unwrap()));
    let upper = PathBuf::from(option(&m[0], "upperdir=").unwrap());
    assert!(PathBuf::from(option(&m[0], "workdir=").unwrap()).is_dir());
    assert_eq!(
        m[0].options
            .iter()
            .map(|o| o.split('=').next().unwrap())
            .collect::<Vec<_>>(),
        ["workdir", "upperdir", "lowerdir"]
    );
    let again = c
        .mounts(MountsRequest {
            snapshotter: String::new(),
            key: "c".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m);
    assert_eq!(
        c.mounts(MountsRequest {
            snapshotter: String::new(),
            key: "base".into(),
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );

    // Views: read-only; one parent is a bind of it.
    let v = view(&mut c, "v", "base").await;
    assert_eq!(v[0].r#type, "bind");
    assert_eq!(v[0].source, a_fs.to_str().unwrap());
    assert_eq!(v[0].options, ["ro", "rbind"]);
    assert_eq!(view(&mut c, "v0", "").await[0].options, ["ro", "rbind"]);

    // Two levels: lowerdir is nearest parent first.
    std::fs::write(upper.join("top-file"), b"x").unwrap();
    commit(&mut c, "top", "c", labels(&[("x", "1")]))
        .await
        .unwrap();
    let m = prepare(&mut c, "d", "top", HashMap::new()).await.unwrap();
    assert_eq!(
        option(&m[0], "lowerdir="),
        Some(format!("{}:{}", upper.display(), a_fs.display()).as_str())
    );
    let vm = view(&mut c, "v2", "top").await;
    assert_eq!(vm[0].r#type, "overlay");
    assert_eq!(
        vm[0].options,
        [format!("lowerdir={}:{}", upper.display(), a_fs.display())]
    );
    assert_eq!(code(remove(&mut c, "base").await), Code::FailedPrecondition);

    // Update: labels only.
    let updated = c
        .update(UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(Info {
                name: "top".into(),
                labels: labels(&[("y", "2"), ("ignored", "z")]),
                ..Info::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.y".into(), "labels.x".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(updated.labels, labels(&[("y", "2")]));
    let bad = c
        .update(UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(Info {
                name: "top".into(),
                ..Info::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        })
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);

    // List with containerd's filters.
    assert_eq!(
        list(&mut c, &[]).await,
        ["base", "d", "top", "v", "v0", "v2"]
    );
    assert_eq!(list(&mut c, &["kind==committed"]).await, ["base", "top"]);
    assert_eq!(list(&mut c, &["kind==view"]).await, ["v", "v0", "v2"]);
    assert_eq!(list(&mut c, &["parent==top,kind==active"]).await, ["d"]);
    assert_eq!(
        list(&mut c, &[r#"labels."y"==2"#, "name==v0"]).await,
        ["top", "v0"]
    );
    // (A server stream: the error arrives as its first message.)
    let mut bad = c
        .list(ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: vec!["kind==".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(bad.message().await), Code::InvalidArgument);

    // A restart keeps everything (the metadata is on disk).
    d.stop("TERM");
    d.spawn();
    let mut c = d.client().await;
    assert_eq!(
        list(&mut c, &[]).await,
        ["base", "d", "top", "v", "v0", "v2"]
    );
    assert_eq!(
        stat(&mut c, "top").await.unwrap().labels,
        labels(&[("y", "2")])
    );

    // Removal, children first; Cleanup leaves no directory behind.
    for k in ["d", "v2", "top", "v", "v0", "base"] {
        remove(&mut c, k).await.unwrap();
    }
    assert_eq!(code(remove(&mut c, "base").await), Code::NotFound);
    std::fs::create_dir(snaps.join("999")).unwrap();
    c.cleanup(CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(list(&mut c, &[]).await, Vec::<String>::new());
    assert_eq!(std::fs::read_dir(&snaps).unwrap().count(), 0);
    drop(c);
    assert!(d.log().contains("serving the snapshots API"));
}

const TARGET: &str = "containerd.io/snapshot.ref";

#[test]
fn socket_mode_and_systemd_notifications() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket = dir.path().join("run/r.sock");
    // A root that exists with a wide mode is narrowed to 0700 (#14).
    std::fs::create_dir(dir.path().join("root")).unwrap();
    std::fs::set_permissions(
        dir.path().join("root"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let daemon = |config: &str| {
        Command::new(env!("CARGO_BIN_EXE_ringstar-snapshotter"))
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--address")
            .arg(&socket)
            .arg("--config")
            .arg(dir.path().join(config))
            .env("NOTIFY_SOCKET", &notify)
            .spawn()
            .unwrap()
    };
    // A config path given but missing is an error (only the default may
    // be absent): it fails before serving.
    assert!(!daemon("absent.toml").wait().unwrap().success());
    std::fs::write(dir.path().join("c.toml"), "noprefetch = true\n").unwrap();
    let mut child = daemon("c.toml");
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Under systemd the layer mount's fds go to its fd store before the
    // daemon is ready (the fds themselves are dropped by this socket).
    let before_ready: Vec<String> = std::iter::from_fn(|| Some(recv()))
        .take_while(|m| m != "READY=1")
        .collect();
    assert!(
        before_ready
            .iter()
            .any(|m| m == "FDSTORE=1\nFDNAME=ringstar-fuse-state\n"),
        "{before_ready:?}"
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
    for d in ["root", "root/store"] {
        let mode = std::fs::metadata(dir.path().join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d} mode {mode:o}");
    }
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert_eq!(recv(), "STOPPING=1");
    assert!(child.wait().unwrap().success());
    // SIGINT unmounts: the fd store is emptied too.
    listener.set_nonblocking(true).unwrap();
    let mut after = Vec::new();
    while let Ok(n) = listener.recv(&mut buf) {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        after.iter().all(|m| m.starts_with("FDSTOREREMOVE=1\n"))
            && after.iter().any(|m| m.ends_with("=ringstar-fuse-state\n")),
        "{after:?}"
    );
    assert!(!socket.exists(), "the socket is removed on exit");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "left mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_prepare_answers_already_exists_or_falls_back() {
    let log_dir = tempfile::tempdir().unwrap();
    let registry = Registry::start_logged(&log_dir.path().join("access.log"));
    let tar = TarBuilder::default()
        .dir("etc/")
        .file("etc/greeting", 0o644, b"hello, lazily\n")
        .finish();
    let other = TarBuilder::default()
        .file("other", 0o644, b"a later layer\n")
        .finish();
    let image = build_image(
        &[tar, other],
        &LayerFormat::Estargz(ringstar_core::writer::WriterOptions::default()),
        &RunConfig::default(),
    )
    .unwrap();
    let layer = &image.layers[0];
    let digest = registry.push("grpc/remote", &layer.blob);
    assert_eq!(digest, layer.digest.to_string());
    let later = registry.push("grpc/remote", &image.layers[1].blob);
    let all_layers = format!("{digest},{later}");
    let d = Daemon::start();
    let mut c = d.client().await;
    let reference = format!("{}/grpc/remote:latest", registry.addr);
    let remote_labels = |toc: &str, layer_digest: &str| {
        labels(&[
            (TARGET, "chain-1"),
            ("containerd.io/snapshot/remote/stargz.reference", &reference),
            ("containerd.io/snapshot/remote/stargz.digest", layer_digest),
            ("containerd.io/snapshot/remote/stargz.layers", &all_layers),
            ("containerd.io/snapshot/stargz/toc.digest", toc),
        ])
    };
    let toc = layer.toc_digest.unwrap().to_string();

    // The handshake: ALREADY_EXISTS, and the committed target is what
    // containerd's List filter finds.
    let r = prepare(
        &mut c,
        "default/1/extract-1 chain-1",
        "",
        remote_labels(&toc, &digest),
    )
    .await;
    assert_eq!(code(r), Code::AlreadyExists, "{}", d.log());
    let found = list(
        &mut c,
        &[r#"labels."containerd.io/snapshot.ref"==chain-1,parent=="""#],
    )
    .await;
    assert_eq!(found, ["chain-1"]);
    let info = stat(&mut c, "chain-1").await.unwrap();
    assert_eq!(info.kind, Kind::Committed as i32);
    assert_eq!(
        info.labels["containerd.io/snapshot/remote"],
        "remote snapshot"
    );
    assert_eq!(
        code(stat(&mut c, "default/1/extract-1 chain-1").await),
        Code::NotFound
    );
    // The image's later layer is resolved already (its tail fetched),
    // though nobody prepared it yet.
    let started = Instant::now();
    while !registry
        .requests()
        .iter()
        .any(|(m, p, s)| m == "GET" && p.ends_with(&later) && *s == 206)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "later layer not pre-resolved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A container on top: its lowerdir is the layer in ringstar's mount.
    let m = view(&mut c, "ctr-view", "chain-1").await;
    let lower = PathBuf::from(&m[0].source);
    assert!(lower.starts_with(d.root().join("fuse")), "{lower:?}");
    assert_eq!(
        std::fs::read_to_string(lower.join("etc/greeting")).unwrap(),
        "hello, lazily\n"
    );
    // The same target again (another namespace): ALREADY_EXISTS at once.
    let r = prepare(
        &mut c,
        "other/2/extract-2 chain-1",
        "",
        remote_labels(&toc, &digest),
    )
    .await;
    assert_eq!(code(r), Code::AlreadyExists);
    assert_eq!(list(&mut c, &[]).await, ["chain-1", "ctr-view"]);

    // A wrong TOC digest, or a blob the registry lacks: a local snapshot
    // for containerd to fill (the fallback), with a log line saying why.
    let mut wrong = remote_labels(
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        &digest,
    );
    wrong.insert(TARGET.into(), "chain-2".into());
    let m = prepare(&mut c, "k2", "", wrong).await.unwrap();
    assert_eq!(m[0].r#type, "bind");
    let mut missing = remote_labels(
        &toc,
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    );
    missing.insert(TARGET.into(), "chain-3".into());
    let m = prepare(&mut c, "k3", "", missing).await.unwrap();
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(stat(&mut c, "k3").await.unwrap().kind, Kind::Active as i32);
    let log = d.log();
    assert!(log.contains("TOC digest is"), "{log}");
    assert_eq!(
        log.matches("remote_snapshot_prepared=false").count(),
        2,
        "{log}"
    );

    // Removing the last snapshot of a layer takes it out of the mount.
    remove(&mut c, "ctr-view").await.unwrap();
    remove(&mut c, "chain-1").await.unwrap();
    assert_eq!(std::fs::read_dir(d.root().join("fuse")).unwrap().count(), 0);
    assert!(!Path::new(&lower).exists());
}

/// SIGKILL in the middle of a stream of Prepare/Commit/Remove: after a
/// restart every stored snapshot has its directories, and Cleanup leaves
/// no directory that no snapshot owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_call_leaves_metadata_and_dirs_consistent() {
    let mut d = Daemon::start();
    let mut c = d.client().await;
    let writer = tokio::spawn(async move {
        let mut parent = String::new();
        for i in 0.. {
            let key = format!("active-{i}");
            if prepare(&mut c, &key, &parent, HashMap::new())
                .await
                .is_err()
            {
                break;
            }
            let name = format!("layer-{i}");
            if commit(&mut c, &name, &key, HashMap::new()).await.is_err() {
                break;
            }
            if i % 3 == 2 {
                // Never existed: a NotFound round trip between writes.
                let _ = remove(&mut c, &format!("view-{i}")).await;
            }
            parent = name;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.stop("KILL");
    let _ = writer.await;
    d.spawn();
    let mut c = d.client().await;
    let names = list(&mut c, &[]).await;
    assert!(names.len() > 2, "too few calls before the kill: {names:?}");
    let snaps = d.root().join("snapshots");
    for name in &names {
        let info = stat(&mut c, name).await.unwrap();
        if info.kind == Kind::Active as i32 {
            let m = c
                .mounts(MountsRequest {
                    snapshotter: String::new(),
                    key: name.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .mounts;
            let dir = option(&m[0], "upperdir=")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(&m[0].source));
            assert!(dir.is_dir(), "{name}: {dir:?} missing");
        } else {
            let v = view(&mut c, &format!("check-{name}"), name).await;
            let dirs: Vec<PathBuf> = match option(&v[0], "lowerdir=") {
                Some(l) => l.split(':').map(PathBuf::from).collect(),
                None => vec![PathBuf::from(&v[0].source)],
            };
            assert!(dirs.iter().all(|d| d.is_dir()), "{name}: {:?}", v[0]);
            remove(&mut c, &format!("check-{name}")).await.unwrap();
        }
    }
    c.cleanup(CleanupRequest {
        snapshotter: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_dir(&snaps).unwrap().count(),
        names.len(),
        "a directory per snapshot, no more"
    );
}
