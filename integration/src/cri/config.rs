//! containerd's config for the CRI suite: the CRI plugin (1.x `version = 2`, 2.x `version = 3`),
//! one runtime handler per [`Handler`], and the CNI network of containerd's own namespace.
use super::daemon::{CriDaemon, CNI_BIN_DIR, POD_SUBNET};
use super::handler::Handler;

impl CriDaemon {
    /// Writes containerd's config, the runc shim's `ConfigPath` TOMLs and the CNI config.
    pub(super) fn write_files(&self) {
        let d = self.dir();
        for sub in ["root", "state", "cni/net.d", "shared", "bin"] {
            std::fs::create_dir_all(d.join(sub)).expect("daemon dir");
        }
        std::fs::write(d.join("runc-rs-runc.toml"), "BinaryName = \"runc\"\n").unwrap();
        std::fs::write(self.crun_config(), "BinaryName = \"crun\"\n").unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "cri-it",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni-it0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(d.join("cni/net.d/10-cri-it.conflist"), conflist.to_string()).unwrap();
        std::fs::write(d.join("config.toml"), self.config()).unwrap();
    }

    /// containerd's config: `version = 2` (1.x, plugin `io.containerd.grpc.v1.cri`) or
    /// `version = 3` (2.x, `io.containerd.cri.v1.runtime` / `io.containerd.cri.v1.images`).
    fn config(&self) -> String {
        let d = self.dir();
        let v3 = self.version().0 >= 2;
        let (runtime_plugin, images_plugin) = if v3 {
            (
                "plugins.'io.containerd.cri.v1.runtime'",
                "plugins.'io.containerd.cri.v1.images'",
            )
        } else {
            (
                "plugins.\"io.containerd.grpc.v1.cri\"",
                "plugins.\"io.containerd.grpc.v1.cri\"",
            )
        };
        let mut c = format!(
            "version = {version}\nroot = \"{root}\"\nstate = \"{state}\"\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n",
            version = if v3 { 3 } else { 2 },
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket().display(),
        );
        // This machine lacks CAP_SYS_RESOURCE: the pause container's oom_score_adj of -998
        // cannot be set, so it is restricted to containerd's own (as for a containerd in a
        // container).
        let cni = format!(
            "[{runtime_plugin}.cni]\n  {bin_key} = {cni_bin}\n  conf_dir = \"{conf}\"\n  \
             max_conf_num = 1\n",
            bin_key = if v3 { "bin_dirs" } else { "bin_dir" },
            cni_bin = if v3 {
                format!("[\"{CNI_BIN_DIR}\"]")
            } else {
                format!("\"{CNI_BIN_DIR}\"")
            },
            conf = d.join("cni/net.d").display(),
        );
        if v3 {
            c += &format!(
                "[{images_plugin}]\n  snapshotter = \"overlayfs\"\n\
                 [{images_plugin}.pinned_images]\n  sandbox = \"{pause}\"\n\
                 [plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = \"127.0.0.1\"\n  \
                 stream_server_port = \"0\"\n\
                 [{runtime_plugin}]\n  restrict_oom_score_adj = true\n\
                 {cni}\
                 [{runtime_plugin}.containerd]\n  default_runtime_name = \"{default}\"\n",
                pause = self.sandbox_image(),
                default = Handler::RuncRsRunc.name(),
            );
        } else {
            c += &format!(
                "[{runtime_plugin}]\n  sandbox_image = \"{pause}\"\n  restrict_oom_score_adj = true\n  \
                 stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
                 {cni}\
                 [{runtime_plugin}.containerd]\n  snapshotter = \"overlayfs\"\n  \
                 default_runtime_name = \"{default}\"\n",
                pause = self.sandbox_image(),
                default = Handler::RuncRsRunc.name(),
            );
        }
        for h in Handler::ALL {
            let table = format!("{runtime_plugin}.containerd.runtimes.{}", h.name());
            if let Some(section) = self.pauseless_runtime(h, &table) {
                c += &section;
                continue;
            }
            c += &format!("[{table}]\n  runtime_type = \"{}\"\n", h.runtime_type());
            match h {
                Handler::RuncRsRunc => {
                    c += &format!(
                        "[{table}.options]\n  ConfigPath = \"{}\"\n",
                        d.join("runc-rs-runc.toml").display()
                    );
                }
                Handler::RuncRsCrun => {
                    c += &format!(
                        "[{table}.options]\n  ConfigPath = \"{}\"\n",
                        self.crun_config().display()
                    );
                }
                Handler::Sandbox => {}
                Handler::GoRunc => {
                    c += &format!("[{table}.options]\n  BinaryName = \"runc\"\n");
                }
            }
        }
        // Our shims under runc's type too (handler_features.rs): what CRI's Status reports.
        if self.has_runc_type_handlers() {
            c += &self.runc_type_handlers(&format!("{runtime_plugin}.containerd.runtimes"));
        }
        c
    }
}
