//! The Kafka listener: accepts connections and runs each one's read–handle–write loop.
//!
//! Requests on one connection are handled one at a time, in order, as Kafka does (it mutes a
//! connection while a request is in flight); clients pipeline across connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use creek_protocol::frame::peek_frame_len;
use creek_protocol::header::parse_request_header;
use kafka_protocol::messages::ApiKey;
use std::io::IoSlice;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::handlers::{self, Ctx, Outcome};

/// Upper bound on concurrent client connections; further ones are refused at accept.
pub(crate) const CONNECTIONS_MAX: usize = 10_000;

/// Accepts connections until `shutdown` turns true.
pub(crate) async fn serve(listener: TcpListener, ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let bytes_max = ctx.broker.config.read().i64("queued.max.request.bytes").clamp(1, i64::from(u32::MAX)) as u32;
    let budget = Arc::new(FrameBudget { permits: Arc::new(Semaphore::new(bytes_max as usize)), bytes_max });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if open.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
                        tracing::warn!(%peer, "refusing connection: {CONNECTIONS_MAX} connections open");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    open.fetch_add(1, Ordering::Relaxed);
                    let (ctx, open, shutdown, budget) = (ctx.clone(), open.clone(), shutdown.clone(), budget.clone());
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, peer, ctx, shutdown, budget).await {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Ctx,
    mut shutdown: watch::Receiver<bool>,
    budget: Arc<FrameBudget>,
) -> std::io::Result<()> {
    let ctx = Ctx { peer: Some(peer), ..ctx };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    // A read-only setting, fixed for the broker's lifetime.
    let frame_max = ctx.broker.config.read().i64("socket.request.max.bytes") as usize;
    loop {
        let mut prefix = [0u8; 4];
        tokio::select! {
            r = rd.read_exact(&mut prefix) => { r?; }
            _ = shutdown.changed() => return Ok(()),
        }
        let len = match peek_frame_len(&prefix, frame_max) {
            Ok(Some(len)) => len,
            Ok(None) => unreachable!("four bytes were read"),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "closing connection");
                return Ok(());
            }
        };
        // Every frame in flight holds its size from the shared budget until it is answered.
        // A frame larger than the whole budget takes all of it rather than waiting forever.
        let permits = u32::try_from(len).unwrap_or(u32::MAX).min(budget.bytes_max);
        let _held = tokio::select! {
            p = budget.permits.clone().acquire_many_owned(permits) => p.map_err(|_| std::io::ErrorKind::Other)?,
            _ = shutdown.changed() => return Ok(()),
        };
        // Memory is committed only as bytes arrive, so an announced-but-unsent frame costs little.
        let mut frame = BytesMut::with_capacity(len.min(1 << 20));
        while frame.len() < len {
            let want = len - frame.len();
            if frame.capacity() == frame.len() {
                frame.reserve(want.min(1 << 20));
            }
            let n = (&mut rd).take(want as u64).read_buf(&mut frame).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        match handle_frame(&ctx, frame.freeze()).await {
            Outcome::Reply(chunks) => write_chunks(&mut wr, &chunks).await?,
            Outcome::NoReply => {}
            Outcome::Close(reason) => {
                tracing::warn!(%peer, %reason, "refusing request and closing connection");
                return Ok(());
            }
        }
    }
}

/// The shared byte budget for frames in flight (`queued.max.request.bytes`).
pub(crate) struct FrameBudget {
    permits: Arc<Semaphore>,
    bytes_max: u32,
}

/// Writes every chunk in order with vectored writes, so shared record chunks go to the socket
/// without being copied into one buffer first.
async fn write_chunks<W: AsyncWrite + Unpin>(wr: &mut W, chunks: &[Bytes]) -> std::io::Result<()> {
    const SLICES_MAX: usize = 64;
    let (mut index, mut offset) = (0, 0);
    while index < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[index..]
            .iter()
            .take(SLICES_MAX)
            .enumerate()
            .map(|(i, c)| IoSlice::new(if i == 0 { &c[offset..] } else { &c[..] }))
            .collect();
        let mut written = wr.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && index < chunks.len() {
            let left = chunks[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// Handles one whole request frame (without its length prefix).
pub(crate) async fn handle_frame(ctx: &Ctx, mut frame: Bytes) -> Outcome {
    // The frame layer guarantees at least 8 bytes: key, version, correlation id.
    let (api_key, version, correlation_id) = {
        let mut peek = &frame[..];
        (peek.get_i16(), peek.get_i16(), peek.get_i32())
    };
    let Ok(key) = ApiKey::try_from(api_key) else {
        return Outcome::Close(format!("unknown API key {api_key}"));
    };
    let Some((min, max)) = handlers::supported(key) else {
        return Outcome::Close(format!("API {key:?} is not implemented"));
    };
    if version < min || version > max {
        if key == ApiKey::ApiVersions {
            // KIP-511: answer an unknown ApiVersions version with v0 and UNSUPPORTED_VERSION.
            return handlers::unsupported_version_response(correlation_id);
        }
        return Outcome::Close(format!("{key:?} v{version} is not supported (v{min}-v{max})"));
    }
    let header = match parse_request_header(&mut frame, key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("{key:?} v{version}: {e}")),
    };
    handlers::dispatch(ctx, key, header, frame).await
}
