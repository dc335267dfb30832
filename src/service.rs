//! The service as systemd will run it, for `sockhook check`: the unit's
//! `User=` and `LoadCredential=` lines (with drop-ins), who that user is, and
//! what it may read and execute, judged from owners and modes the way the
//! kernel does (ACLs aside).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// The unit `check` judges by.
pub const UNIT: &str = "sockhook.service";

/// Where systemd looks for units, most important first (systemd.unit(5)).
const UNIT_DIRS: [&str; 5] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Where `LoadCredential=ID` without a path looks (systemd.exec(5)).
const CREDSTORES: [&str; 3] = ["/etc/credstore", "/run/credstore", "/usr/lib/credstore"];

/// What `check` needs of an installed unit.
#[derive(Debug, Default)]
pub struct Unit {
    /// The unit file found first.
    pub path: PathBuf,
    /// `User=`, if set.
    pub user: Option<String>,
    /// `LoadCredential=ID:PATH` in effect, in order; the path is where
    /// systemd reads it from (`None`: `ID` alone, found in no credential store).
    pub credentials: Vec<(String, Option<PathBuf>)>,
}

impl Unit {
    /// The installed `sockhook.service` with its drop-ins, or `None`.
    pub fn find() -> Option<Unit> {
        Unit::find_in(&UNIT_DIRS.map(Path::new), UNIT)
    }

    fn find_in(dirs: &[&Path], name: &str) -> Option<Unit> {
        let path = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())?;
        let mut unit = Unit {
            path: path.clone(),
            ..Unit::default()
        };
        let mut files = vec![path];
        // Drop-ins: NAME.d/*.conf from every directory, a file name found in
        // a more important directory hiding the same name further down.
        let mut dropins: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            let Ok(listing) = fs::read_dir(dir.join(format!("{name}.d"))) else {
                continue;
            };
            for entry in listing.flatten() {
                let file = entry.path();
                let seen = dropins.iter().any(|d| d.file_name() == file.file_name());
                if file.extension().is_some_and(|e| e == "conf") && !seen {
                    dropins.push(file);
                }
            }
        }
        dropins.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.extend(dropins);
        for file in files {
            if let Ok(text) = fs::read_to_string(&file) {
                unit.read(&text);
            }
        }
        Some(unit)
    }

    /// Applies one unit file or drop-in.
    fn read(&mut self, text: &str) {
        let mut service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !service || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let value = value.trim();
            match key.trim() {
                "User" => self.user = (!value.is_empty()).then(|| value.to_owned()),
                "LoadCredential" if value.is_empty() => self.credentials.clear(),
                "LoadCredential" => {
                    let (id, source) = match value.split_once(':') {
                        Some((id, source)) => (id, Some(PathBuf::from(source))),
                        None => (value, stored(value)),
                    };
                    self.credentials.retain(|(other, _)| other != id);
                    self.credentials.push((id.to_owned(), source));
                }
                _ => {}
            }
        }
    }

    /// Where the credential `id` comes from: `None` when the unit loads no such
    /// credential, `Some(None)` when it loads it from no file that exists.
    pub fn credential(&self, id: &str) -> Option<Option<&Path>> {
        self.credentials
            .iter()
            .find(|(other, _)| other == id)
            .map(|(_, source)| source.as_deref())
    }
}

/// The credential store file for `LoadCredential=ID` without a path.
fn stored(id: &str) -> Option<PathBuf> {
    CREDSTORES
        .iter()
        .map(|dir| Path::new(dir).join(id))
        .find(|p| p.exists())
}

/// A user as the kernel checks it: uid and every group.
#[derive(Debug, Clone)]
pub struct Who {
    /// The user name.
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary and supplementary groups.
    pub gids: Vec<u32>,
}

impl Who {
    /// The user called `name`, or `None` if there is none.
    pub fn named(name: &str) -> Option<Who> {
        let user = User::from_name(name).ok()??;
        let cname = std::ffi::CString::new(name).ok()?;
        let mut gids: Vec<u32> = nix::unistd::getgrouplist(&cname, user.gid)
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        gids.push(user.gid.as_raw());
        Some(Who {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gids,
        })
    }

    /// Whether this user has all of `want` (4 read, 2 write, 1 execute or
    /// search) on a file with `meta`, by owner, group and mode.
    pub fn may(&self, meta: &fs::Metadata, want: u32) -> bool {
        let mode = meta.mode();
        if self.uid == 0 {
            // Root reads and writes anything; it executes what has an x bit.
            return want & 1 == 0 || meta.is_dir() || mode & 0o111 != 0;
        }
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want & 7 == want
    }

    /// The first directory above `path` that this user cannot search, with
    /// its metadata.
    pub fn blocked_at(&self, path: &Path) -> Option<(PathBuf, fs::Metadata)> {
        let mut dirs: Vec<&Path> = path.ancestors().skip(1).collect();
        dirs.reverse();
        dirs.into_iter()
            .filter(|d| !d.as_os_str().is_empty())
            .find_map(|dir| {
                let meta = fs::metadata(dir).ok()?;
                (!self.may(&meta, 1)).then(|| (dir.to_owned(), meta))
            })
    }
}

/// `mode 0640, root:sockhook`.
pub fn describe(meta: &fs::Metadata) -> String {
    format!(
        "mode {:04o}, {}:{}",
        meta.mode() & 0o7777,
        user_name(meta.uid()),
        group_name(meta.gid())
    )
}

/// The name of uid `uid`, or the number.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// The name of gid `gid`, or the number.
pub fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => gid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_from(texts: &[&str]) -> Unit {
        let mut unit = Unit::default();
        for text in texts {
            unit.read(text);
        }
        unit
    }

    #[test]
    fn credentials_accumulate_and_an_empty_line_resets_them() {
        let unit = unit_from(&[
            "[Unit]\nLoadCredential=not:/in/service\n[Service]\nUser=sockhook\nLoadCredential=key:/etc/sockhook/key\n#LoadCredential=c:/x\n",
            "[Service]\nLoadCredential=deploy:/etc/sockhook/deploy\n",
        ]);
        assert_eq!(unit.user.as_deref(), Some("sockhook"));
        assert_eq!(
            unit.credential("key"),
            Some(Some(Path::new("/etc/sockhook/key")))
        );
        assert_eq!(
            unit.credential("deploy"),
            Some(Some(Path::new("/etc/sockhook/deploy")))
        );
        assert_eq!(unit.credential("not"), None);
        assert_eq!(unit.credential("c"), None);
        let reset = unit_from(&[
            "[Service]\nLoadCredential=key:/k\n",
            "[Service]\nLoadCredential=\nLoadCredential=other:/o\n",
        ]);
        assert_eq!(reset.credential("key"), None);
        assert!(reset.credential("other").is_some());
    }

    #[test]
    fn modes_are_judged_by_owner_group_and_others() {
        let dir = std::env::temp_dir().join(format!("sockhook-service-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let nobody = Who {
            name: "nobody".into(),
            uid: 65534,
            gids: vec![65534],
        };
        let meta = |mode: u32| {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            fs::metadata(&file).unwrap()
        };
        let owner = fs::metadata(&file).unwrap().uid();
        if owner != 65534 {
            assert!(!nobody.may(&meta(0o640), 4));
            assert!(nobody.may(&meta(0o644), 4));
            assert!(!nobody.may(&meta(0o644), 1));
            assert!(nobody.may(&meta(0o755), 5));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
