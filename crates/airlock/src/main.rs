mod serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let config = std::env::args().nth(3).map(std::path::PathBuf::from);
    serve::run(config).await
}
