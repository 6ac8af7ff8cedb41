//! Debian's nginx serving a folder on a loopback port (a mirror for `fetch` and for
//! mounts from `--cache https://...`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::registry::free_port;
use super::{scratch, wait_for};

/// Waits until something listens on `port` of 127.0.0.1.
pub fn wait_for_port(port: u16) {
    wait_for("the server to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Debian's nginx in the foreground on its own port, serving `root`; killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    pub fn serve(root: &Path) -> Nginx {
        let dir = scratch("nginx");
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {dir}/access.log;\n  default_type application/octet-stream;\n  \
             client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  \
             fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  \
             sendfile on;\n  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
            dir = dir.display(),
            root = root.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nginx (Debian package nginx-light)");
        let nginx = Nginx { child, port, dir };
        wait_for_port(port);
        nginx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
