//! The subcommands: each takes the parsed options, does its work and prints the result.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use e2e::control;

use crate::install;

/// `slicectl lab down`: [`e2e::cleanup`] for one prefix, or for every lab directory under
/// [`e2e::LAB_BASE`].
///
/// # Errors
/// Every cleanup that failed.
pub fn lab_down(prefix: &str, all: bool) -> Result<()> {
    e2e::require_root()?;
    let prefixes: Vec<String> = if all {
        match std::fs::read_dir(e2e::LAB_BASE) {
            Ok(entries) => entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => bail!("cannot read {}: {e}", e2e::LAB_BASE),
        }
    } else {
        vec![prefix.to_owned()]
    };
    if prefixes.is_empty() {
        println!("no labs under {}", e2e::LAB_BASE);
    }
    let mut failed = Vec::new();
    for p in &prefixes {
        match e2e::cleanup(p) {
            Ok(()) => println!("lab {p}: removed"),
            Err(e) => {
                eprintln!("lab {p}: {e:#}");
                failed.push(p.as_str());
            }
        }
    }
    if failed.is_empty() { Ok(()) } else { bail!("cleanup failed for lab(s) {}", failed.join(", ")) }
}

/// `slicectl lab up -f FILE`: the lab's control plane started in the background on the file's
/// clusters and slices; prints the hub's report once it answers.
///
/// # Errors
/// When it cannot start or does not answer.
pub fn lab_up(prefix: &str, file: &Path) -> Result<()> {
    e2e::require_root()?;
    control::read_manifest(file)?;
    let exe = std::env::current_exe().context("finding slicectl's own path")?;
    let file = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    control::serve::start(&exe, prefix, &file)?;
    println!("{}", control::serve::request(prefix, &control::serve::Request::Status)?);
    println!(
        "The lab {prefix} and its control plane run in the background (log: {}/{prefix}/{}).",
        e2e::LAB_BASE,
        control::serve::LOG
    );
    println!("  slicectl lab apply --prefix {prefix} --cluster c1 -f objects.yaml");
    println!("  slicectl lab exec --prefix {prefix} c1/<namespace>/<pod> -- ip addr");
    println!("  slicectl lab status --prefix {prefix}");
    println!("  slicectl lab down --prefix {prefix}");
    Ok(())
}

/// `slicectl lab serve`: the control plane in the foreground.
///
/// # Errors
/// When the file is not valid or the lab cannot be built.
pub fn lab_serve(prefix: &str, file: &Path) -> Result<()> {
    e2e::require_root()?;
    control::serve::serve(prefix, &control::read_manifest(file)?)
}

/// `slicectl lab apply|delete [--cluster NAME] -f FILE`.
///
/// # Errors
/// When the file cannot be read or the control plane refuses it (its reason).
pub fn lab_apply(prefix: &str, cluster: Option<String>, file: &Path, apply: bool) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let request = if apply {
        control::serve::Request::Apply { cluster, text }
    } else {
        control::serve::Request::Delete { cluster, text }
    };
    println!("{}", control::serve::request(prefix, &request)?);
    Ok(())
}

/// `slicectl lab console`: the hub's web console over lab `prefix`'s state, served on `addr`
/// until interrupted; the document is asked of the lab's control plane every second.
///
/// # Errors
/// When the lab has no running control plane or `addr` cannot be bound.
pub fn lab_console(prefix: &str, addr: std::net::SocketAddr) -> Result<()> {
    let owned = prefix.to_owned();
    let fetch = move || -> Result<slice_api::console::Model> {
        let text = control::serve::request(&owned, &control::serve::Request::Console)?;
        serde_json::from_str(&text).context("the lab's console document")
    };
    let console = slice_kube::console::Console::new();
    console.publish(&fetch()?);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let (bound, _task) =
            slice_kube::console::spawn(addr, console.clone()).await.with_context(|| format!("listening on {addr}"))?;
        println!("slicenet console of lab {prefix}: http://{bound}/ (Ctrl-C stops it)");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            match tokio::task::spawn_blocking(fetch.clone()).await {
                Ok(Ok(model)) => console.publish(&model),
                Ok(Err(e)) => eprintln!("slicectl: lab console: {e:#}"),
                Err(e) => eprintln!("slicectl: lab console: {e}"),
            }
        }
    })
}

/// `slicectl lab status`.
///
/// # Errors
/// When the lab has no running control plane.
pub fn lab_status(prefix: &str) -> Result<()> {
    println!("{}", control::serve::request(prefix, &control::serve::Request::Status)?);
    Ok(())
}

/// `slicectl lab exec CLUSTER/NAMESPACE/POD -- CMD…`: the command in the pod's network
/// namespace with the pod's `/etc/resolv.conf` (so `dig NAME` asks the cluster's resolver),
/// its output and exit status passed through.
#[must_use]
pub fn lab_exec(prefix: &str, pod: &str, command: &[String]) -> std::process::ExitCode {
    let run = || -> Result<std::process::ExitStatus> {
        let parts: Vec<&str> = pod.split('/').collect();
        let [cluster, namespace, name] = parts.as_slice() else {
            bail!("{pod:?} is not <cluster>/<namespace>/<pod>");
        };
        let request = control::serve::Request::PodNetns {
            cluster: (*cluster).to_owned(),
            namespace: (*namespace).to_owned(),
            name: (*name).to_owned(),
        };
        let answer = control::serve::request(prefix, &request)?;
        let pod_context: control::serve::PodContext =
            serde_json::from_str(&answer).with_context(|| format!("the lab's answer {answer:?}"))?;
        e2e::command_with_resolv_conf(&pod_context.netns, &pod_context.resolv_conf, command)
            .status()
            .with_context(|| format!("running {command:?} in {pod}"))
    };
    match run() {
        Ok(status) => std::process::ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)),
        Err(e) => {
            eprintln!("slicectl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `slicectl diagnose --hub-kubeconfig FILE | --lab PREFIX [-o json]`: the report on stdout;
/// exit status 0 without failures, 1 with one, 2 when the checks could not run.
#[must_use]
pub fn diagnose(hub_kubeconfig: Option<&Path>, lab: Option<&str>, json: bool) -> std::process::ExitCode {
    let run = || -> Result<slice_api::diagnose::Report> {
        if let Some(prefix) = lab {
            let text = control::serve::request(prefix, &control::serve::Request::Diagnose)?;
            return serde_json::from_str(&text).context("the lab's diagnose report");
        }
        let kubeconfig = hub_kubeconfig.context("--hub-kubeconfig or --lab")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
        let view = runtime.block_on(async {
            let client = slice_kube::kubeconfig::client_from_kubeconfig(kubeconfig, None).await?;
            crate::hub_status::fetch(client).await
        })?;
        Ok(slice_api::diagnose::hub_findings(&view))
    };
    match run() {
        Ok(report) => {
            let text =
                if json { serde_json::to_string_pretty(&report).unwrap_or_default() + "\n" } else { report.render() };
            if let Err(e) = print_out(&text) {
                eprintln!("slicectl: {e:#}");
                return std::process::ExitCode::from(2);
            }
            if report.failed() { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("slicectl: diagnose: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `slicectl status --hub-kubeconfig`: slices, clusters, tunnels and problems from the hub.
///
/// # Errors
/// When the kubeconfig cannot be used or a list request fails.
pub fn hub_status(kubeconfig: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let view = runtime.block_on(async {
        let client = slice_kube::kubeconfig::client_from_kubeconfig(kubeconfig, None).await?;
        crate::hub_status::fetch(client).await
    })?;
    print_out(&crate::hub_status::render(&view))
}

/// `slicectl status`: the status table of one node from its files.
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn status(node: &str, state_dir: &Path, ipam_dir: &Path) -> Result<()> {
    let rows = e2e::demo::node_status(node, state_dir, ipam_dir, &BTreeMap::new())?;
    print!("{}", e2e::demo::status_table(&rows));
    Ok(())
}

/// `slicectl policy show`: what the node agent configuration at `config` compiles to.
pub fn policy_show(config: &Path, slice: Option<&str>) -> Result<()> {
    let config = slice_api::node::NodeAgentConfig::load(config)?;
    let text = slice_node::firewall::render::show(&config, slice).map_err(anyhow::Error::msg)?;
    print_out(&text)
}

/// Writes `text` to stdout (a closed pipe, as in `slicectl install hub | head`, is an error
/// here rather than a panic).
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).context("writing to stdout")
}

/// `slicectl crds`: every CRD to stdout, or one file per CRD into `output_dir`; with `check`,
/// fails when the files in `output_dir` are stale.
///
/// # Errors
/// When a file cannot be written, or (with `check`) the files are stale.
pub fn crds(output_dir: Option<&Path>, check: bool) -> Result<()> {
    match (output_dir, check) {
        (Some(dir), true) => crate::crds::check(dir),
        (Some(dir), false) => crate::crds::write(dir),
        (None, true) => bail!("--check needs --output-dir"),
        (None, false) => print_out(&crate::crds::manifest()?.to_yaml()?),
    }
}

/// `slicectl install mcs-crds`.
///
/// # Errors
/// When a CRD cannot be serialised or stdout is closed.
pub fn mcs_crds() -> Result<()> {
    print_out(&crate::crds::mcs_manifest()?.to_yaml()?)
}

/// The install options: `image`, and the webhook certificate from `tls_dir` or a new one.
fn install_options(image: Option<&str>, tls_dir: Option<&Path>) -> Result<install::Options> {
    let image = image.map_or_else(install::default_image, str::to_owned);
    match tls_dir {
        Some(dir) => Ok(install::Options { image, webhook_tls: crate::tls::load(dir)?, multus: false }),
        None => install::Options::generate(&image),
    }
}

/// `slicectl install hub`.
///
/// # Errors
/// When the webhook certificate cannot be read or made.
pub fn install_hub(image: Option<&str>, tls_dir: Option<&Path>) -> Result<()> {
    print_out(&install::hub(&install_options(image, tls_dir)?)?.to_yaml()?)
}

/// Where `install worker` gets the worker's hub credentials.
#[derive(Debug, Clone)]
pub enum HubAccess {
    /// A join file of `slicectl join --hub-kubeconfig`.
    JoinFile(std::path::PathBuf),
    /// A hand-made kubeconfig and the cluster's name.
    Kubeconfig { cluster: String, kubeconfig: std::path::PathBuf, server: Option<String> },
    /// Neither (clap refuses this before).
    Missing,
}

/// The cluster name, hub kubeconfig text and server override of `source`.
fn hub_access(source: &HubAccess) -> Result<(String, String, Option<String>)> {
    match source {
        HubAccess::JoinFile(path) => {
            let join = crate::join_file::JoinFile::read(path)?;
            Ok((join.cluster.clone(), join.kubeconfig(), None))
        }
        HubAccess::Kubeconfig { cluster, kubeconfig, server } => {
            let raw = std::fs::read_to_string(kubeconfig)
                .with_context(|| format!("reading --hub-kubeconfig {}", kubeconfig.display()))?;
            Ok((cluster.clone(), raw, server.clone()))
        }
        HubAccess::Missing => bail!("give --join FILE (from `slicectl join`), or --cluster and --hub-kubeconfig"),
    }
}

/// `slicectl install worker`.
///
/// # Errors
/// When the join file or hub kubeconfig cannot be read or used from a pod, or the cluster name
/// is invalid.
pub fn install_worker(image: Option<&str>, tls_dir: Option<&Path>, source: &HubAccess, multus: bool) -> Result<()> {
    let (cluster, raw, server) = hub_access(source)?;
    let opts = install::Options { multus, ..install_options(image, tls_dir)? };
    print_out(&install::worker(&opts, &cluster, &raw, server.as_deref())?.to_yaml()?)
}

/// `slicectl install worker-credentials --join FILE`.
///
/// # Errors
/// When the join file cannot be read.
pub fn install_worker_credentials(join: &Path) -> Result<()> {
    let (_, raw, _) = hub_access(&HubAccess::JoinFile(join.to_path_buf()))?;
    print_out(&install::worker_credentials(&raw, None)?.to_yaml()?)
}

/// `slicectl install worker-hub-access`.
///
/// # Errors
/// When the cluster name is invalid.
pub fn install_worker_hub_access(cluster: &str) -> Result<()> {
    print_out(&install::worker_hub_access(cluster)?.to_yaml()?)?;
    eprintln!(
        "After applying this on the hub, make the worker's first hub token (bound in time; the worker renews it):\n  {}\n\
         and put it in the hub kubeconfig you pass to `slicectl install worker --hub-kubeconfig`.",
        install::first_token_command(cluster)
    );
    Ok(())
}

/// `slicectl join` without a hub kubeconfig: prints the MemberCluster.
///
/// # Errors
/// When the options are invalid.
pub fn join(opts: &crate::join::JoinOptions) -> Result<()> {
    print_out(&crate::join::manifest(opts)?.to_yaml()?)
}

/// `slicectl join --hub-kubeconfig`: registers the cluster on the hub (or with `rotate`, revokes
/// its worker's tokens) and writes the join file.
///
/// # Errors
/// When the options or the kubeconfig are invalid, a request fails or the file cannot be written.
pub fn join_hub(
    opts: &crate::join::JoinOptions,
    kubeconfig: &Path,
    hub_server: Option<&str>,
    output: Option<std::path::PathBuf>,
    rotate: bool,
) -> Result<()> {
    crate::install::check_cluster_name(&opts.cluster)?;
    let hub = crate::register::hub_endpoint(kubeconfig, hub_server)?;
    if crate::register::is_loopback_server(&hub.server) {
        eprintln!(
            "slicectl: warning: the hub's address {} is this machine's; the worker's pods in {} cannot reach it \
             there: pass --hub-server with an address they reach (kind: `kind get kubeconfig --internal`)",
            hub.server, opts.cluster
        );
    }
    let output = output.unwrap_or_else(|| std::path::PathBuf::from(format!("{}.join", opts.cluster)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let file = runtime.block_on(async {
        let client = slice_kube::kubeconfig::client_from_kubeconfig(kubeconfig, None).await?;
        if rotate {
            crate::register::rotate(&client, &opts.cluster, &hub).await
        } else {
            crate::register::register(&client, opts, &hub).await
        }
    })?;
    file.write(&output)?;
    let verb = if rotate { "rotated the hub token of" } else { "registered" };
    println!(
        "{verb} cluster {} on the hub; join file: {} (mode 0600, holds a hub token)",
        opts.cluster,
        output.display()
    );
    if rotate {
        println!(
            "In cluster {}: slicectl install worker-credentials --join {} | kubectl apply --server-side -f -",
            opts.cluster,
            output.display()
        );
    } else {
        println!(
            "In cluster {}: slicectl install worker --join {} | kubectl apply --server-side -f -",
            opts.cluster,
            output.display()
        );
    }
    Ok(())
}

/// `slicectl cni-install`.
///
/// # Errors
/// See [`crate::cni_install::install`].
pub fn cni_install(
    plugin: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    paths: &crate::cni_install::PluginPaths,
) -> Result<()> {
    let primary = crate::cni_install::install_with(plugin, bin_dir, conf_dir, paths)?;
    println!(
        "installed {} into {}; chained after {} in {}",
        crate::cni_install::PLUGIN_TYPE,
        bin_dir.display(),
        primary.display(),
        conf_dir.join(crate::cni_install::CONFLIST_NAME).display()
    );
    Ok(())
}

/// `slicectl node-uninstall`: each removal on its own line (`would …` with `dry_run`).
///
/// # Errors
/// See [`crate::node_uninstall::uninstall`].
pub fn node_uninstall(layout: &crate::node_uninstall::NodeLayout, dry_run: bool) -> Result<()> {
    let removals = crate::node_uninstall::uninstall(layout, dry_run)?;
    let mut text = String::new();
    for r in &removals {
        text.push_str(if dry_run { "would " } else { "done: " });
        text.push_str(&r.to_string());
        text.push('\n');
    }
    if removals.is_empty() {
        text.push_str("nothing of slicenet's on this node\n");
    }
    print_out(&text)
}

/// `slicectl uninstall worker|hub`; with `leave` (the hub's kubeconfig and the cluster's name),
/// the member cluster then leaves the hub.
///
/// # Errors
/// When a kubeconfig cannot be used, or naming every step that failed.
pub fn uninstall(
    hub: bool,
    kubeconfig: &Path,
    dry_run: bool,
    image: Option<&str>,
    timeout_secs: u64,
    leave: Option<(std::path::PathBuf, String)>,
) -> Result<()> {
    let image = image.map_or_else(install::default_image, str::to_owned);
    let steps = if hub { crate::uninstall::hub_plan(&image)? } else { crate::uninstall::worker_plan(&image)? };
    let leave_steps = leave.as_ref().map(|(_, cluster)| crate::uninstall::leave_plan(cluster)).transpose()?;
    let timing = crate::uninstall::Timing {
        node_cleanup: std::time::Duration::from_secs(timeout_secs),
        ..crate::uninstall::Timing::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let (lines, hub_lines) = runtime.block_on(async {
        let client = slice_kube::kubeconfig::client_from_kubeconfig(kubeconfig, None).await?;
        let lines = crate::uninstall::run(&client, &steps, dry_run, timing).await?;
        let hub_lines = match (&leave, &leave_steps) {
            (Some((hub_kubeconfig, _)), Some(steps)) => {
                let hub = slice_kube::kubeconfig::client_from_kubeconfig(hub_kubeconfig, None).await?;
                Some(crate::uninstall::run(&hub, steps, dry_run, timing).await?)
            }
            _ => None,
        };
        anyhow::Ok((lines, hub_lines))
    })?;
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if lines.is_empty() {
        text.push_str("nothing of slicenet's in this cluster\n");
    }
    if let (Some(hub_lines), Some((_, cluster))) = (hub_lines, &leave) {
        text.push_str(&format!("on the hub, cluster {cluster} leaving:\n"));
        for l in &hub_lines {
            text.push_str(&format!("  {l}\n"));
        }
        if hub_lines.is_empty() {
            text.push_str("  nothing left of it\n");
        }
    }
    print_out(&text)
}

/// `slicectl version [--kubeconfig]`.
///
/// # Errors
/// When the kubeconfig cannot be used or the pods cannot be listed.
pub fn version(kubeconfig: Option<&Path>) -> Result<()> {
    let Some(kubeconfig) = kubeconfig else {
        return print_out(&format!("slicectl {}\n", crate::version::SLICECTL));
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    let pods = runtime.block_on(async {
        let client = slice_kube::kubeconfig::client_from_kubeconfig(kubeconfig, None).await?;
        crate::version::fetch(&client).await
    })?;
    print_out(&crate::version::render(&crate::version::running(&pods), crate::version::SLICECTL))
}
