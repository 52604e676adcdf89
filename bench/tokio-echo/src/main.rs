//! tokio-echo: the idiomatic tokio echo server, as tokio's own tutorial
//! writes it, for bench/compare to set shardd's raw echo against.
//!
//! One thread (the current-thread runtime, as shardd runs one shard per
//! CPU and bench/compare gives each server one CPU), one task per
//! connection, TCP_NODELAY, and a 64 KiB buffer per connection: read, then
//! write_all what was read. Raw echo: bytes in = bytes out.
//!
//!   tokio-echo PORT        listen on 127.0.0.1:PORT (loopback only)

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUFFER_SIZE: usize = 64 * 1024;

fn main() {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        Some(Ok(port)) if port != 0 => port,
        _ => {
            eprintln!("usage: tokio-echo PORT   (listens on 127.0.0.1:PORT)");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio-echo: cannot build the runtime");
    if let Err(e) = runtime.block_on(serve(port)) {
        eprintln!("tokio-echo: {}", e);
        std::process::exit(1);
    }
}

async fn serve(port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(e) => {
                // Out of descriptors and the like: the connection waits in
                // the backlog; back off instead of spinning on the error.
                eprintln!("tokio-echo: accept: {}", e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream) {
    // Small messages go out at once, as shardd's (nodelay = true) do.
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
