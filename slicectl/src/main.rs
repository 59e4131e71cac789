//! `slicectl`: slicenet's CLI. A thin shell: parse the command line (clap derive), call one
//! library function, map its error to a message and exit code. The work lives in the
//! `slicectl` library and the `e2e` crate (the lab, the demo and the status table).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use slicectl::commands;
use slicectl::join::JoinOptions;

#[derive(Debug, Parser)]
#[command(name = "slicectl", version, about = "slicenet's command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Prints slicenet's manifests for `kubectl apply -f -`.
    Install {
        #[command(subcommand)]
        command: InstallCmd,
    },
    /// Registers a member cluster with the hub. With --hub-kubeconfig (the hub admin's): applies
    /// its MemberCluster and hub access, asks for the worker's first hub token and writes the join
    /// file (mode 0600) that `slicectl install worker --join` reads. Without: prints the
    /// MemberCluster only.
    Join {
        /// The member cluster's name (a DNS label of at most 46 characters).
        #[arg(long)]
        cluster: String,
        /// The hub admin's kubeconfig (its current context): register on the hub and write the
        /// join file.
        #[arg(long)]
        hub_kubeconfig: Option<PathBuf>,
        /// The hub API server's URL as the member cluster's pods reach it [default: the
        /// kubeconfig's server].
        #[arg(long, requires = "hub_kubeconfig")]
        hub_server: Option<String>,
        /// Where to write the join file [default: <cluster>.join].
        #[arg(long, short = 'o', requires = "hub_kubeconfig")]
        output: Option<PathBuf>,
        /// Revoke the worker's hub tokens and write a join file with a new one; the registration
        /// and the slices stay. Apply `slicectl install worker-credentials --join FILE` in the
        /// member cluster afterwards.
        #[arg(long, requires = "hub_kubeconfig", conflicts_with_all = ["pod_cidrs", "service_cidrs", "multus", "uplink_kbps"])]
        rotate: bool,
        /// The cluster's pod CIDRs (repeat for several).
        #[arg(long = "pod-cidr")]
        pod_cidrs: Vec<String>,
        /// The cluster's service CIDRs (repeat for several).
        #[arg(long = "service-cidr")]
        service_cidrs: Vec<String>,
        /// The cluster runs Multus (the worker then writes NetworkAttachmentDefinitions).
        #[arg(long)]
        multus: bool,
        /// Rate of the uplink the cluster's gateways send through, kbit/s: slices' QoS profiles
        /// are enforced under it (MemberCluster `uplinkKbps`).
        #[arg(long)]
        uplink_kbps: Option<u64>,
    },
    /// Removes slicenet from a cluster: webhooks first, controllers, what they made, every
    /// node's data plane and CNI entry (a cleanup DaemonSet), then the install itself.
    /// Idempotent; `--dry-run` lists what would go.
    Uninstall {
        #[command(subcommand)]
        command: UninstallCmd,
    },
    /// slicectl's version and, with --kubeconfig, every slicenet component's version as its
    /// pods run it (node agents with their node's slice-cni, controllers, webhooks, slice-dns,
    /// gateways), and where that breaks the version skew policy.
    Version {
        /// A cluster's kubeconfig (hub or member cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// The CRDs generated from slice-api's types: to stdout, or one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files here (deploy/crds in the repository).
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Do not write: fail when the files in --output-dir are stale.
        #[arg(long, requires = "output_dir")]
        check: bool,
    },
    /// Installs slice-cni on this node and chains it after the primary CNI (the node agent's
    /// init container runs this).
    CniInstall {
        /// The slice-cni binary to copy.
        #[arg(long, default_value = "/usr/local/bin/slice-cni")]
        plugin: PathBuf,
        /// The host's CNI binary dir.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The host's CNI configuration dir.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// slice-cni's `stateDir` (the node agent's state dir), when not its default.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// slice-cni's `ipamDir`, when not its default.
        #[arg(long)]
        ipam_dir: Option<PathBuf>,
    },
    /// Removes everything slicenet made on this node (run in the node's network namespace,
    /// after its node agent stopped): slice-cni's conflist and binary, router namespaces, VXLAN
    /// devices, nftables tables, the QoS tree, state and IPAM dirs. Idempotent.
    NodeUninstall {
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        #[arg(long, default_value = slice_api::names::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(long, default_value = slice_api::names::DEFAULT_IPAM_DIR)]
        ipam_dir: PathBuf,
        #[arg(long, default_value = slice_api::names::DEFAULT_STATUS_DIR)]
        status_dir: PathBuf,
        #[arg(long, default_value = slice_api::names::DEFAULT_NETNS_DIR)]
        netns_dir: PathBuf,
        #[arg(long, default_value = slice_api::names::DEFAULT_ROUTER_NETNS_PREFIX)]
        router_netns_prefix: String,
    },
    /// The lab: clusters of network namespaces on this machine (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// MultiNetworkPolicy on the slice path.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Checks a cluster set end to end and says what is wrong, where, and the fix: against a
    /// hub (its SliceConfigs, MemberClusters and WorkerSlices: registration, heartbeats, worker
    /// status, every tunnel's state and loss, overlapping subnets) or a lab started with
    /// `lab up -f` (also node agents, gateways and their peers' keys, UDP to every public
    /// gateway endpoint, the path MTU between gateways). Exit status 0: no failure; 1: a
    /// failure found; 2: the checks could not run.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["hub_kubeconfig", "lab"])))]
    Diagnose {
        /// The hub's kubeconfig (its current context).
        #[arg(long, visible_alias = "kubeconfig")]
        hub_kubeconfig: Option<PathBuf>,
        /// The prefix of a lab started with `slicectl lab up -f`.
        #[arg(long)]
        lab: Option<String>,
        /// `text` or `json`.
        #[arg(long, short = 'o', default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Prints the slices of one node from its files (node-state files and slice-cni's IPAM
    /// dir), or with --hub-kubeconfig the slices, clusters and tunnels as the hub sees them and
    /// why anything is unhealthy.
    Status {
        /// Ask the hub (this kubeconfig's current context) instead of reading this node's files.
        #[arg(long, visible_alias = "kubeconfig")]
        hub_kubeconfig: Option<PathBuf>,
        /// The node agent's state dir (node-state files).
        #[arg(long, default_value = slice_api::names::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// slice-cni's IPAM dir.
        #[arg(long, default_value = slice_api::names::DEFAULT_IPAM_DIR)]
        ipam_dir: PathBuf,
        /// Node name for the table.
        #[arg(long, default_value = "this node")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Prints the nftables table a node agent configuration compiles to, per slice (anti-spoof,
    /// services, policies), as nft text; what is in force: `nft list table inet slicenet` in the
    /// slice's router namespace.
    Show {
        /// The node agent's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Only this slice.
        #[arg(long)]
        slice: Option<String>,
    },
}

/// Options of the installs that run slicenet's image.
#[derive(Debug, Args)]
struct ImageArgs {
    /// The image of every component [default: ghcr.io/slicenet/slicenet:<slicectl's version>].
    #[arg(long)]
    image: Option<String>,
    /// A dir with the webhook's `ca.crt`, `tls.crt` and `tls.key` (for `*.slicenet-system.svc`);
    /// without it a new self-signed CA (10 years) and certificate (90 days) are made on every
    /// run, the CA kept in a Secret from which the controllers renew the certificate. A
    /// certificate given here is never renewed by slicenet (renew it yourself, e.g. with
    /// cert-manager). Give the same files to `install hub` and `install worker` when the hub is
    /// also a member cluster.
    #[arg(long)]
    webhook_tls_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum InstallCmd {
    /// The hub: CRDs, hub controller, SliceConfig validating webhook.
    Hub {
        #[command(flatten)]
        image: ImageArgs,
    },
    /// A member cluster: worker controller, node agent DaemonSet (installs slice-cni), pod webhook.
    Worker {
        #[command(flatten)]
        image: ImageArgs,
        /// The join file written by `slicectl join --hub-kubeconfig` (cluster, hub, CA, token).
        #[arg(long, conflicts_with_all = ["cluster", "hub_kubeconfig", "hub_server"], required_unless_present = "cluster")]
        join: Option<PathBuf>,
        /// This cluster's name, as registered with `slicectl join` (without --join).
        #[arg(long, requires = "hub_kubeconfig")]
        cluster: Option<String>,
        /// A kubeconfig for the hub with the worker's credentials (certificates and token
        /// embedded), stored in the Secret slicenet-hub-kubeconfig (without --join).
        #[arg(long, requires = "cluster")]
        hub_kubeconfig: Option<PathBuf>,
        /// The hub API server's URL as seen from this cluster's pods, replacing the server of
        /// the kubeconfig's current context.
        #[arg(long)]
        hub_server: Option<String>,
        /// The cluster runs Multus: pods get the slice as a secondary network in their
        /// `k8s.v1.cni.cncf.io/networks` annotation (webhook `--mode multus`).
        #[arg(long)]
        multus: bool,
    },
    /// Only the worker's Secret with its hub credentials, from a join file (after `slicectl join
    /// --rotate`): nothing else in the cluster changes.
    WorkerCredentials {
        /// The join file.
        #[arg(long)]
        join: PathBuf,
    },
    /// To apply on the hub, per member cluster: the worker's ServiceAccount and roles there (its
    /// namespace slicenet-cluster-<cluster> and its own MemberCluster). Prints on stderr how to
    /// make the worker's first token (`kubectl create token`, bound in time); the worker renews
    /// it before it expires.
    WorkerHubAccess {
        /// The member cluster's name.
        #[arg(long)]
        cluster: String,
    },
    /// The CRDs only (also part of `install hub`).
    Crds,
    /// The MCS API's CRDs (ServiceExport, ServiceImport) for member clusters that lack them:
    /// multi-cluster services and slice DNS need them.
    McsCrds,
}

/// Options of `slicectl uninstall`.
#[derive(Debug, Args)]
struct UninstallArgs {
    /// The cluster's kubeconfig (its current context), as an administrator.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Only list what would go.
    #[arg(long)]
    dry_run: bool,
    /// The image of the node cleanup DaemonSet [default: ghcr.io/slicenet/slicenet:<slicectl's
    /// version>].
    #[arg(long)]
    image: Option<String>,
    /// How long to wait for the node cleanup on every node, seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum UninstallCmd {
    /// A member cluster: pod webhook, worker, node agents, what the worker made, every node's
    /// slice-cni entry and data plane, the install. Uninstall the workers before the hub. With
    /// --hub-kubeconfig, the cluster then leaves the hub (MemberCluster, WorkerSlices, access).
    Worker {
        #[command(flatten)]
        args: UninstallArgs,
        /// The hub admin's kubeconfig: remove the cluster from the hub too.
        #[arg(long, requires = "cluster")]
        hub_kubeconfig: Option<PathBuf>,
        /// The cluster's name on the hub (with --hub-kubeconfig).
        #[arg(long, requires = "hub_kubeconfig")]
        cluster: Option<String>,
    },
    /// The hub: SliceConfig webhook, hub controller, every WorkerSlice, SliceConfig and
    /// MemberCluster (finalizers released), the member clusters' access, the CRDs.
    Hub {
        #[command(flatten)]
        args: UninstallArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Builds the demo (two slices with the same subnet on a 2-node cluster), shows pods,
    /// reachability and status, and tears it down. Exits non-zero when reachability differs
    /// from what slicenet promises.
    Demo,
    /// Builds the demo lab and its pods and leaves them running (`slicectl lab down` removes it);
    /// with `-f FILE`, builds the clusters of a SliceConfig/MemberCluster YAML file instead and
    /// leaves the lab's control plane running in the background (the hub's and the workers' own
    /// passes), for `lab apply`, `lab delete`, `lab exec` and `lab status`.
    Up {
        /// Lab name prefix ([a-z][a-z0-9]{0,9}).
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
        /// SliceConfig (and MemberCluster) YAML, e.g. deploy/examples/lab-slice.yaml.
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
    },
    /// The lab's control plane in the foreground (what `lab up -f` starts in the background).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        prefix: String,
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Applies YAML as `kubectl apply` does: to a member cluster (`--cluster`: Namespace, Pod,
    /// Service, ServiceExport) or to the hub (SliceConfig, MemberCluster).
    Apply {
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
        /// The member cluster (as `kubectl --context`); without it, the hub.
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Deletes the objects of a YAML file from a member cluster, or its SliceConfigs from the hub.
    Delete {
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
    },
    /// Runs a command in a pod's network namespace: `slicectl lab exec c3/shop/client -- dig …`.
    Exec {
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
        /// `<cluster>/<namespace>/<pod>`.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The hub's web console over a lab started with `lab up -f` (read-only; live).
    Console {
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
        /// Where to serve it.
        #[arg(long, default_value = "127.0.0.1:8090")]
        addr: std::net::SocketAddr,
    },
    /// The hub's report of a lab started with `lab up -f`: slices, clusters, tunnels, problems.
    Status {
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
    },
    /// Removes everything a lab made (also after a crash). Idempotent.
    Down {
        /// Lab name prefix ([a-z][a-z0-9]{0,9}).
        #[arg(long, default_value = e2e::demo::PREFIX, conflicts_with = "all")]
        prefix: String,
        /// Every lab found under /run/slicenet-lab.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Install { command } => match command {
            InstallCmd::Hub { image } => {
                commands::install_hub(image.image.as_deref(), image.webhook_tls_dir.as_deref())
            }
            InstallCmd::Worker { image, join, cluster, hub_kubeconfig, hub_server, multus } => {
                let source = match (join, cluster, hub_kubeconfig) {
                    (Some(file), _, _) => commands::HubAccess::JoinFile(file),
                    (None, Some(cluster), Some(kubeconfig)) => {
                        commands::HubAccess::Kubeconfig { cluster, kubeconfig, server: hub_server }
                    }
                    _ => commands::HubAccess::Missing,
                };
                commands::install_worker(image.image.as_deref(), image.webhook_tls_dir.as_deref(), &source, multus)
            }
            InstallCmd::WorkerCredentials { join } => commands::install_worker_credentials(&join),
            InstallCmd::WorkerHubAccess { cluster } => commands::install_worker_hub_access(&cluster),
            InstallCmd::Crds => commands::crds(None, false),
            InstallCmd::McsCrds => commands::mcs_crds(),
        },
        Cmd::Join {
            cluster,
            hub_kubeconfig,
            hub_server,
            output,
            rotate,
            pod_cidrs,
            service_cidrs,
            multus,
            uplink_kbps,
        } => {
            let opts = JoinOptions { cluster, pod_cidrs, service_cidrs, multus, uplink_kbps };
            match hub_kubeconfig {
                Some(kubeconfig) => commands::join_hub(&opts, &kubeconfig, hub_server.as_deref(), output, rotate),
                None => commands::join(&opts),
            }
        }
        Cmd::Uninstall { command } => {
            let (hub, args, leave) = match command {
                UninstallCmd::Worker { args, hub_kubeconfig, cluster } => (false, args, hub_kubeconfig.zip(cluster)),
                UninstallCmd::Hub { args } => (true, args, None),
            };
            commands::uninstall(hub, &args.kubeconfig, args.dry_run, args.image.as_deref(), args.timeout, leave)
        }
        Cmd::Version { kubeconfig } => commands::version(kubeconfig.as_deref()),
        Cmd::Crds { output_dir, check } => commands::crds(output_dir.as_deref(), check),
        Cmd::CniInstall { plugin, bin_dir, conf_dir, state_dir, ipam_dir } => {
            let paths = slicectl::cni_install::PluginPaths { state_dir, ipam_dir };
            commands::cni_install(&plugin, &bin_dir, &conf_dir, &paths)
        }
        Cmd::NodeUninstall {
            dry_run,
            bin_dir,
            conf_dir,
            state_dir,
            ipam_dir,
            status_dir,
            netns_dir,
            router_netns_prefix,
        } => {
            let layout = slicectl::node_uninstall::NodeLayout {
                cni_bin_dir: bin_dir,
                cni_conf_dir: conf_dir,
                state_dir,
                ipam_dir,
                status_dir,
                netns_dir,
                router_netns_prefix,
            };
            commands::node_uninstall(&layout, dry_run)
        }
        Cmd::Lab { command: LabCmd::Demo } => e2e::demo::run(),
        Cmd::Lab { command: LabCmd::Up { prefix, file: None } } => e2e::demo::up(&prefix),
        Cmd::Lab { command: LabCmd::Up { prefix, file: Some(file) } } => commands::lab_up(&prefix, &file),
        Cmd::Lab { command: LabCmd::Serve { prefix, file } } => commands::lab_serve(&prefix, &file),
        Cmd::Lab { command: LabCmd::Apply { prefix, cluster, file } } => {
            commands::lab_apply(&prefix, cluster, &file, true)
        }
        Cmd::Lab { command: LabCmd::Delete { prefix, cluster, file } } => {
            commands::lab_apply(&prefix, cluster, &file, false)
        }
        Cmd::Lab { command: LabCmd::Exec { prefix, pod, command } } => {
            return commands::lab_exec(&prefix, &pod, &command);
        }
        Cmd::Lab { command: LabCmd::Status { prefix } } => commands::lab_status(&prefix),
        Cmd::Lab { command: LabCmd::Console { prefix, addr } } => commands::lab_console(&prefix, addr),
        Cmd::Lab { command: LabCmd::Down { prefix, all } } => commands::lab_down(&prefix, all),
        Cmd::Policy { command: PolicyCmd::Show { config, slice } } => commands::policy_show(&config, slice.as_deref()),
        Cmd::Diagnose { hub_kubeconfig, lab, output } => {
            return commands::diagnose(hub_kubeconfig.as_deref(), lab.as_deref(), output == "json");
        }
        Cmd::Status { hub_kubeconfig: Some(kubeconfig), .. } => commands::hub_status(&kubeconfig),
        Cmd::Status { hub_kubeconfig: None, state_dir, ipam_dir, node } => {
            commands::status(&node, &state_dir, &ipam_dir)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slicectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
