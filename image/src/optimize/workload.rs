//! What the optimizer runs: the image config's entrypoint, command,
//! environment, working directory and user, with the user's flags over
//! them as `docker run` applies its own (a new entrypoint drops the
//! image's command unless arguments are given too).

use std::path::Path;

use super::sandbox::Workload;
use crate::ImageError;

/// PATH when the image sets none (containerd's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The user's changes to the image's workload.
#[derive(Debug, Clone, Default)]
pub struct WorkloadOverrides {
    pub entrypoint: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE`, added after (and so over) the image's.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `uid[:gid]` or `name[:group]`, names looked up in the image.
    pub user: Option<String>,
}

/// The workload of image config `cfg` (the whole config document) with
/// `over` applied; names of users and groups are looked up in `rootfs`.
pub fn workload(
    cfg: &serde_json::Value,
    over: &WorkloadOverrides,
    rootfs: &Path,
) -> Result<Workload, ImageError> {
    let strings = |key: &str| -> Vec<String> {
        cfg.pointer(&format!("/config/{key}"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut args = over
        .entrypoint
        .clone()
        .unwrap_or_else(|| strings("Entrypoint"));
    match (&over.args, &over.entrypoint) {
        (Some(a), _) => args.extend(a.iter().cloned()),
        (None, None) => args.extend(strings("Cmd")),
        (None, Some(_)) => {}
    }
    if args.is_empty() {
        return Err(ImageError::Invalid(
            "the image has no entrypoint or command: give --entrypoint or --args".into(),
        ));
    }
    let mut env = strings("Env");
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env.extend(over.env.iter().cloned());
    let cwd = over
        .cwd
        .clone()
        .or_else(|| {
            cfg.pointer("/config/WorkingDir")?
                .as_str()
                .map(String::from)
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let user = over
        .user
        .clone()
        .or_else(|| cfg.pointer("/config/User")?.as_str().map(String::from))
        .unwrap_or_default();
    let (uid, gid, additional_gids) = resolve_user(&user, rootfs)?;
    Ok(Workload {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
    })
}

/// `user` (`""`, `uid`, `name`, either with `:gid` or `:group`) as ids,
/// with the user's supplementary groups, looked up in the image's
/// `/etc/passwd` and `/etc/group`.
fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32, Vec<u32>), ImageError> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let passwd = read_in_root(rootfs, "etc/passwd");
    let group = read_in_root(rootfs, "etc/group");
    let (name, group_name) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:...; group: name:x:gid:members
    let by_name = |text: &str, name: &str, field: usize| {
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field)?.parse::<u32>().ok())
    };
    let unknown =
        |what: &str, n: &str| ImageError::Invalid(format!("no {what} {n:?} in the image"));
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.get(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid))
                .and_then(|f| f.get(3)?.parse().ok())
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => (
            by_name(&passwd, name, 2).ok_or_else(|| unknown("user", name))?,
            by_name(&passwd, name, 3).unwrap_or(0),
        ),
    };
    if let Some(g) = group_name {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => by_name(&group, g, 2).ok_or_else(|| unknown("group", g))?,
        };
    }
    let additional = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
        .filter_map(|f| f.get(2)?.parse::<u32>().ok())
        .collect();
    Ok((uid, gid, additional))
}

/// A small text file of the image (empty when absent or unreadable),
/// resolved inside the root like every other name of the image.
fn read_in_root(rootfs: &Path, path: &str) -> String {
    use std::io::Read;
    let Ok(root) = std::fs::File::open(rootfs) else {
        return String::new();
    };
    let Ok(fd) = rustix::fs::openat2(
        &root,
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
    ) else {
        return String::new();
    };
    let mut text = String::new();
    let _ = std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> serde_json::Value {
        serde_json::json!({"config": {
            "Entrypoint": ["/entry"], "Cmd": ["run", "it"],
            "Env": ["A=1"], "WorkingDir": "/app", "User": "app"}})
    }

    #[test]
    fn flags_replace_the_image_workload_as_docker_run_does() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "app:x:1001:\nextra:x:2000:app\n",
        )
        .unwrap();
        let w = workload(&cfg(), &WorkloadOverrides::default(), root.path()).unwrap();
        assert_eq!(w.args, ["/entry", "run", "it"]);
        assert_eq!(w.env, [DEFAULT_PATH, "A=1"]);
        assert_eq!((w.cwd.as_str(), w.uid, w.gid), ("/app", 1000, 1001));
        assert_eq!(w.additional_gids, [2000]);

        let over = WorkloadOverrides {
            entrypoint: Some(vec!["sh".into()]),
            env: vec!["B=2".into()],
            user: Some("0:extra".into()),
            ..Default::default()
        };
        let w = workload(&cfg(), &over, root.path()).unwrap();
        assert_eq!(w.args, ["sh"], "a new entrypoint drops the image's command");
        assert_eq!(w.env.last().map(String::as_str), Some("B=2"));
        assert_eq!((w.uid, w.gid), (0, 2000));

        let over = WorkloadOverrides {
            args: Some(vec!["-c".into(), "true".into()]),
            user: Some("nobody".into()),
            ..Default::default()
        };
        assert!(
            workload(&cfg(), &over, root.path()).is_err(),
            "unknown user"
        );
        let over = WorkloadOverrides {
            args: Some(vec!["-c".into(), "true".into()]),
            ..Default::default()
        };
        let w = workload(&cfg(), &over, root.path()).unwrap();
        assert_eq!(w.args, ["/entry", "-c", "true"]);
        let empty = serde_json::json!({"config": {}});
        assert!(workload(&empty, &WorkloadOverrides::default(), root.path()).is_err());
    }
}
