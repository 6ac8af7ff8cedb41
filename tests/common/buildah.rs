//! buildah, the builder sealer v0.9+ embeds, as the tests run it: its own storage folder
//! (vfs: no kernel mounts), removed on drop.

use std::path::PathBuf;
use std::process::Command;

/// buildah with its own storage folder (vfs: no kernel mounts), removed on drop.
pub struct Buildah {
    pub root: PathBuf,
}

impl Buildah {
    pub fn new() -> Buildah {
        assert!(
            Command::new("buildah").arg("--version").output().is_ok(),
            "buildah is missing: apt-get install buildah"
        );
        Buildah {
            root: super::scratch("buildah"),
        }
    }

    /// `buildah` on this storage folder.
    pub fn command(&self) -> Command {
        let mut command = Command::new("buildah");
        command
            .args(["--storage-driver", "vfs", "--root"])
            .arg(self.root.join("root"))
            .arg("--runroot")
            .arg(self.root.join("run"));
        command
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("run buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all"]).output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
