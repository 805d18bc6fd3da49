//! The `flux` command line: generate images, serve the HTTP API, print the schema.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
