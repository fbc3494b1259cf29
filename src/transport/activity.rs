//! A read half that remembers when bytes last arrived (for heart-beat and
//! inactivity checks) and first hands out the bytes read while sniffing.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

pub struct ActivityReader<R> {
    inner: R,
    prefix: BytesMut,
    pub last_read: Instant,
}

impl<R> ActivityReader<R> {
    pub fn new(inner: R, prefix: BytesMut) -> Self {
        ActivityReader {
            inner,
            prefix,
            last_read: Instant::now(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ActivityReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last_read = Instant::now();
        }
        res
    }
}
