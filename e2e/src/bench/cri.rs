//! Section 2: CRI RunPodSandbox time with and without `slice-cni` in the chain.
//!
//! Two labs, identical but for the conflist: one node of each runs the same sequence of pods
//! (namespace `bench`, a member of the bench slice in the slice lab), interleaved one by one
//! and alternating which lab goes first, so that drift on the machine lands on both sides.
//! Only the RunPodSandbox call is timed; each pod is then stopped and removed (timed apart), so
//! every RunPodSandbox sees the same empty node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use k8s_cri::v1::PodSandboxConfig;

use super::Summary;
use super::cni::MEMBER_NAMESPACE;
use super::process::check_interrupted;
use crate::cri::CriClient;
use crate::{Node, PodSpec};

/// Section 2's figures.
#[derive(Debug, Clone)]
pub(crate) struct CriFigures {
    pub(crate) run_with: Summary,
    pub(crate) run_without: Summary,
    pub(crate) remove_with: Summary,
    pub(crate) remove_without: Summary,
}

/// One side: a node and a CRI client of our own, so that exactly the RunPodSandbox call is timed.
struct Side<'a> {
    node: &'a Node,
    cri: CriClient,
    slice: bool,
    run: Vec<Duration>,
    remove: Vec<Duration>,
}

impl Side<'_> {
    /// The kubelet-like sandbox config `Node::run_pod` sends.
    fn config(&self, name: &str, uid: &str) -> Result<PodSandboxConfig> {
        self.node.sandbox_config(&PodSpec::new(MEMBER_NAMESPACE, name).label("app", "bench"), uid)
    }

    /// One pod: RunPodSandbox (timed), a check of its interfaces on the first pod, then
    /// StopPodSandbox + RemovePodSandbox (timed apart).
    fn cycle(&mut self, i: usize, timed: bool, check: bool) -> Result<()> {
        let name = format!("bench-{i}");
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let config = self.config(&name, &uid)?;
        let start = Instant::now();
        let id = self.cri.run_pod_sandbox(config).map_err(|e| anyhow!("{}: pod {name}: {e:#}", self.label()))?;
        let run = start.elapsed();
        let checked = if check { self.check(&id) } else { Ok(()) };
        let start = Instant::now();
        let removed = self.cri.stop_pod_sandbox(&id).and_then(|()| self.cri.remove_pod_sandbox(&id));
        let remove = start.elapsed();
        checked?;
        removed.map_err(|e| anyhow!("{}: removing pod {name}: {e:#}", self.label()))?;
        if timed {
            self.run.push(run);
            self.remove.push(remove);
        }
        Ok(())
    }

    /// The pod has `slice0` exactly when `slice-cni` is in the chain.
    fn check(&self, id: &str) -> Result<()> {
        let status = self.cri.pod_sandbox_status(id)?;
        let netns: PathBuf = crate::cri::netns_from_info(&status.info)?;
        let has_slice0 = crate::netns::exec(&netns, &["ip", "link", "show", "slice0"])?.status.success();
        if has_slice0 != self.slice {
            bail!("{}: the pod {} slice0", self.label(), if has_slice0 { "has" } else { "lacks" });
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("{} ({})", self.node.netns_name(), if self.slice { "with slice-cni" } else { "without slice-cni" })
    }
}

/// Runs section 2: `pods` timed pods on each node after two warm-up pods each.
pub(crate) fn run<'a>(
    with: (&'a Node, &'a str),
    without: (&'a Node, &'a str),
    pods: usize,
    rt: &Arc<tokio::runtime::Runtime>,
) -> Result<CriFigures> {
    let side = |(node, _prefix): (&'a Node, &'a str), slice: bool| -> Result<Side<'a>> {
        Ok(Side {
            node,
            cri: CriClient::new(rt.clone(), &node.containerd_socket())?,
            slice,
            run: Vec::new(),
            remove: Vec::new(),
        })
    };
    let mut with = side(with, true)?;
    let mut without = side(without, false)?;
    let warmup = 2;
    for i in 0..warmup + pods {
        check_interrupted()?;
        let (timed, check) = (i >= warmup, i == 0);
        if i % 2 == 0 {
            without.cycle(i, timed, check)?;
            with.cycle(i, timed, check)?;
        } else {
            with.cycle(i, timed, check)?;
            without.cycle(i, timed, check)?;
        }
        if (i + 1) % 25 == 0 {
            eprintln!("  … {} of {} pods per lab", i + 1, warmup + pods);
        }
    }
    Ok(CriFigures {
        run_with: Summary::of(&with.run),
        run_without: Summary::of(&without.run),
        remove_with: Summary::of(&with.remove),
        remove_without: Summary::of(&without.remove),
    })
}
