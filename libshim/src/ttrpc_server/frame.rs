//! ttrpc's wire format: a 10-byte header (payload length and stream id, big-endian; message
//! type; flags) before each protobuf payload.
use ttrpc::proto::{MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_TYPE_RESPONSE};

/// The largest payload either side may send, as in every ttrpc implementation.
pub const MESSAGE_LENGTH_MAX: usize = 4 << 20;
/// Oversized payloads are skipped through a buffer of this size, never allocated whole.
const DISCARD_CHUNK: usize = 4 << 10;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one header; `None` on a clean end of the stream between messages.
pub async fn read_header(
    r: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<MessageHeader>> {
    let mut buf = [0u8; MESSAGE_HEADER_LENGTH];
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    Ok(Some(MessageHeader::from(buf)))
}

/// Reads a payload of `len` bytes (the caller checked it against the limit).
pub async fn read_payload(
    r: &mut (impl AsyncRead + Unpin),
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Skips a payload the server will not read.
pub async fn discard(r: &mut (impl AsyncRead + Unpin), len: usize) -> std::io::Result<()> {
    // On the heap: an array here would sit in every connection's future, idle or not.
    let mut chunk = vec![0u8; DISCARD_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(DISCARD_CHUNK);
        r.read_exact(&mut chunk[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// A response frame: header and payload in one buffer, written with one call.
pub fn response(stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = MessageHeader {
        length: payload.len() as u32,
        stream_id,
        type_: MESSAGE_TYPE_RESPONSE,
        flags: 0,
    };
    let mut frame: Vec<u8> = header.into();
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn headers_and_payloads() {
        let frame = response(7, b"abc");
        assert_eq!(&frame[..10], &[0, 0, 0, 3, 0, 0, 0, 7, 2, 0]);
        let mut r = &frame[..];
        let h = read_header(&mut r).await.unwrap().unwrap();
        assert_eq!(
            (h.length, h.stream_id, h.type_),
            (3, 7, MESSAGE_TYPE_RESPONSE)
        );
        assert_eq!(read_payload(&mut r, 3).await.unwrap(), b"abc");
        assert!(read_header(&mut r).await.unwrap().is_none(), "clean end");
        let mut torn = &frame[..4];
        assert!(read_header(&mut torn).await.is_err(), "end inside a header");
        let mut big = &[0u8; 10000][..];
        discard(&mut big, 9000).await.unwrap();
        assert_eq!(big.len(), 1000);
    }
}
