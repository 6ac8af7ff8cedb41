//! Garage (an S3-compatible distributed object store, crates.io `garage`) as a one-node
//! cluster on loopback ports, with a bucket and a key made for the test; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::nginx::wait_for_port;
use super::registry::free_port;
use super::scratch;

pub struct Garage {
    nodes: Vec<Node>,
    pub dir: PathBuf,
    pub s3_port: u16,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// One Garage server process and its configuration.
struct Node {
    child: Option<Child>,
    conf: PathBuf,
    dir: PathBuf,
    s3_port: u16,
}

impl Node {
    fn run(&mut self) {
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

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node started by a cluster that fails to form is stopped too.
impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
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
        Self::cluster(bucket, 1)
    }

    /// A fresh cluster of `n` nodes on loopback (replication factor `n`) with bucket
    /// `bucket`; clients talk to node 0.
    pub fn cluster(bucket: &str, n: usize) -> Garage {
        let dir = scratch("garage");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + std::process::id() as usize) % 256))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let rpc = free_port();
            let s3_port = free_port();
            let conf = node_dir.join("garage.toml");
            std::fs::write(
                &conf,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = {n}\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"us-east-1\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n",
                    d = node_dir.display()
                ),
            )
            .unwrap();
            let mut node = Node {
                child: None,
                conf,
                dir: node_dir,
                s3_port,
            };
            node.run();
            nodes.push(node);
        }
        let conf = nodes[0].conf.clone();
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| garage(&node.conf, &["node", "id", "-q"]).trim().to_string())
            .collect();
        for id in &ids[1..] {
            garage(&conf, &["node", "connect", id]);
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            garage(&conf, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        garage(&conf, &["layout", "apply", "--version", "1"]);
        garage(&conf, &["bucket", "create", bucket]);
        let key = garage(&conf, &["key", "create", "test-key"]);
        garage(
            &conf,
            &[
                "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "test-key",
            ],
        );
        Garage {
            s3_port: nodes[0].s3_port,
            nodes,
            dir,
            bucket: bucket.to_string(),
            key_id: field(&key, "Key ID"),
            secret: field(&key, "Secret key"),
        }
    }

    /// Starts (again) node 0 on the same folders and ports.
    pub fn run(&mut self) {
        self.nodes[0].run();
    }

    /// Kills node 0 (the data stays).
    pub fn stop(&mut self) {
        self.nodes[0].stop();
    }

    /// Kills node `i` (the data stays).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].stop();
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
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
