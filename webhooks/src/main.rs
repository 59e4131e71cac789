//! `slice-webhooks`: not implemented yet (issue 5).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet: see issue 5")
}
