//! Garage (an S3-compatible distributed object store, crates.io `garage`) as a one-node
//! cluster on loopback ports, with a bucket and a key made for the test; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::nginx::wait_for_port;
use super::registry::free_port;
use super::scratch;

pub struct Garage {
    child: Option<Child>,
    pub dir: PathBuf,
    conf: PathBuf,
    pub s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// Runs `garage -c CONF ARGS`, asserting success; returns stdout.
fn garage(conf: &Path, args: &[&str]) -> String {
    let out = Command::new("garage")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("run garage (cargo install garage --locked)");
    assert!(
        out.status.success(),
        "garage {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value after `label:` on the line that has it.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().eq_ignore_ascii_case(label)).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
}

impl Garage {
    /// A fresh single-node store with bucket `bucket`.
    pub fn start(bucket: &str) -> Garage {
        let dir = scratch("garage");
        let rpc = free_port();
        let s3_port = free_port();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + std::process::id() as usize) % 256))
            .collect();
        let conf = dir.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                 [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let mut g = Garage {
            child: None,
            dir,
            conf,
            s3_port,
            bucket: bucket.to_string(),
            key_id: String::new(),
            secret: String::new(),
        };
        g.run();
        let node = garage(&g.conf, &["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        garage(
            &g.conf,
            &["layout", "assign", "-z", "dc1", "-c", "1G", &node],
        );
        garage(&g.conf, &["layout", "apply", "--version", "1"]);
        garage(&g.conf, &["bucket", "create", bucket]);
        let key = garage(&g.conf, &["key", "create", "test-key"]);
        g.key_id = field(&key, "Key ID");
        g.secret = field(&key, "Secret key");
        garage(
            &g.conf,
            &[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "test-key",
            ],
        );
        g
    }

    /// Starts (again) the server on the same folders and ports.
    pub fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("garage.log")).unwrap();
        let child = Command::new("garage")
            .arg("-c")
            .arg(&self.conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage (cargo install garage --locked)");
        self.child = Some(child);
        wait_for_port(self.s3_port);
    }

    /// Kills the server (the data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a client needs: credentials and region.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
