//! Splits length-prefixed Kafka frames out of a byte stream, refusing sizes over a limit.

use bytes::{Buf, BytesMut};
use thiserror::Error;

/// Why a frame cannot be read. Each of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame length {0} is negative")]
    Negative(i32),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {0} bytes is too short to hold a request header")]
    TooShort(usize),
}

/// The smallest request: api key, api version and correlation id.
pub const MIN_REQUEST_BYTES: usize = 8;

/// Returns the length the next frame announces once its 4-byte prefix is buffered, checking the
/// limit before any of the body is read (so a hostile length cannot make us buffer it).
pub fn peek_frame_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 {
        return Err(FrameError::Negative(len));
    }
    let len = len as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len, max: frame_bytes_max });
    }
    if len < MIN_REQUEST_BYTES {
        return Err(FrameError::TooShort(len));
    }
    Ok(Some(len))
}

/// Takes one whole frame (without its length prefix) off the front of `buf`, if buffered.
pub fn split_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Option<BytesMut>, FrameError> {
    match peek_frame_len(buf, frame_bytes_max)? {
        Some(len) if buf.len() >= 4 + len => {
            buf.advance(4);
            Ok(Some(buf.split_to(len)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_whole_and_limits_hold() {
        let mut b = BytesMut::from(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7][..]);
        assert_eq!(split_frame(&mut b, 100).unwrap(), None);
        b.extend_from_slice(&[8, 0xff]);
        assert_eq!(&split_frame(&mut b, 100).unwrap().unwrap()[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[..], &[0xff]);
        assert_eq!(peek_frame_len(&[0xff, 0xff, 0xff, 0xfe], 100), Err(FrameError::Negative(-2)));
        assert_eq!(peek_frame_len(&[0, 0, 1, 0], 100), Err(FrameError::TooLarge { len: 256, max: 100 }));
        assert_eq!(peek_frame_len(&[0, 0, 0, 2], 100), Err(FrameError::TooShort(2)));
    }
}
