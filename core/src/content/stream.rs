//! Splitting a connection's decrypted byte stream into control frames and pieces, for drivers.
//!
//! A piece travels as a `Message::Piece` header frame followed by the piece's raw bytes. The
//! driver's transport runs a [`Splitter`] over what it decrypts: control frames go to the node
//! as `Input::Received` (whole frames, header included), each piece is collected (at most one
//! piece, [`PIECE_LEN`] bytes, is buffered), hashed with [`piece_hash`] on the transport's
//! thread, and handed to the node as one `Input::Piece`.

use crate::content::proto::PieceHeader;
use crate::content::verify::{Layout, PIECE_LEN, piece_cv};
use crate::request::RequestId;
use crate::wire::{self, FRAME_HEADER_LEN, FRAME_LEN_MAX, Message, WIRE_VERSION, WireError};

/// Postcard's variant index of `Message::Piece` (a one-byte varint).
const PIECE_VARIANT: u8 = 4;

/// What a stream carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Part {
    /// One or more whole control frames (length prefixes included), in order.
    Frames(Vec<u8>),
    /// A whole piece and the header that announced it.
    Piece { id: RequestId, header: PieceHeader, data: Vec<u8> },
}

/// The hash a piece is checked against: its chaining value, or for a one-piece file the
/// file's own hash (its content id).
pub fn piece_hash(header: &PieceHeader, data: &[u8]) -> [u8; 32] {
    match Layout::new(header.size) {
        Ok(layout) if layout.pieces() > 1 => piece_cv(header.index, data),
        _ => *blake3::hash(data).as_bytes(),
    }
}

/// The stream state of one connection.
#[derive(Debug, Default)]
pub struct Splitter {
    /// A partial frame (header included), at most `FRAME_HEADER_LEN + FRAME_LEN_MAX` bytes.
    frame: Vec<u8>,
    /// A piece being collected, and how many bytes it still needs.
    piece: Option<(RequestId, PieceHeader, Vec<u8>, usize)>,
}

impl Splitter {
    /// Feeds decrypted bytes; appends what completed to `out`. An error means the peer broke
    /// the framing (an oversized or empty frame, an undecodable piece header): close.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Part>) -> Result<(), WireError> {
        while !bytes.is_empty() {
            if let Some((_, _, data, remaining)) = &mut self.piece {
                let take = (*remaining).min(bytes.len());
                data.extend_from_slice(&bytes[..take]);
                *remaining -= take;
                bytes = &bytes[take..];
                if *remaining == 0
                    && let Some((id, header, data, _)) = self.piece.take()
                {
                    out.push(Part::Piece { id, header, data });
                }
                continue;
            }
            let need = if self.frame.len() < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                let len = u32::from_be_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]]) as usize;
                if len > FRAME_LEN_MAX {
                    return Err(WireError::FrameTooLarge { len, max: FRAME_LEN_MAX });
                }
                if len == 0 {
                    return Err(WireError::EmptyFrame);
                }
                FRAME_HEADER_LEN + len
            };
            let take = (need - self.frame.len()).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.frame.len() == need && need > FRAME_HEADER_LEN {
                let frame = std::mem::take(&mut self.frame);
                self.frame_done(frame, out)?;
            }
        }
        Ok(())
    }

    fn frame_done(&mut self, frame: Vec<u8>, out: &mut Vec<Part>) -> Result<(), WireError> {
        let body = &frame[FRAME_HEADER_LEN..];
        if body.len() >= 2 && body[0] == WIRE_VERSION && body[1] == PIECE_VARIANT {
            let Message::Piece { id, header } = wire::decode_body(body)? else {
                return Err(WireError::Undecodable("malformed piece header".into()));
            };
            let len = header.piece_len()? as usize;
            debug_assert!(len as u64 <= PIECE_LEN);
            if len == 0 {
                out.push(Part::Piece { id, header, data: Vec::new() });
            } else {
                self.piece = Some((id, header, Vec::with_capacity(len), len));
            }
            return Ok(());
        }
        match out.last_mut() {
            Some(Part::Frames(frames)) => frames.extend_from_slice(&frame),
            _ => out.push(Part::Frames(frame)),
        }
        Ok(())
    }
}

/// Encodes a piece for the wire: its header frame followed by its bytes.
pub fn encode_piece(id: RequestId, header: PieceHeader, data: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut out = wire::encode_frame(&Message::Piece { id, header })?;
    out.extend_from_slice(data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::verify::ContentId;
    use crate::discovery;
    use crate::wire::Request;

    #[test]
    fn frames_and_pieces_come_apart_whatever_the_chunking() {
        let control = wire::encode_frame(&Message::Request {
            id: RequestId(1),
            body: Request::Discovery(discovery::Request::GetNetworkInfo),
        })
        .expect("fits");
        let data: Vec<u8> = (0..(PIECE_LEN as usize + 100)).map(|i| (i % 251) as u8).collect();
        let header = PieceHeader { id: ContentId([7; 32]), index: 1, size: data.len() as u64 };
        let piece = &data[PIECE_LEN as usize..];
        let mut stream = control.clone();
        stream.extend(encode_piece(RequestId(2), header, piece).expect("fits"));
        stream.extend(&control);
        for chunk in [1, 3, 4, 5, 100, 65_535, stream.len()] {
            let mut splitter = Splitter::default();
            let mut out = Vec::new();
            for part in stream.chunks(chunk) {
                splitter.push(part, &mut out).expect("well formed");
            }
            // Consecutive control frames within one push coalesce; compare the concatenation.
            let mut frames = Vec::new();
            let mut pieces = Vec::new();
            for part in out {
                match part {
                    Part::Frames(f) => frames.extend(f),
                    Part::Piece { id, header, data } => pieces.push((id, header, data)),
                }
            }
            assert_eq!(frames, [control.clone(), control.clone()].concat(), "chunk {chunk}");
            assert_eq!(pieces, vec![(RequestId(2), header, piece.to_vec())], "chunk {chunk}");
        }
    }

    #[test]
    fn a_lying_header_or_an_oversized_frame_is_an_error() {
        let header = PieceHeader { id: ContentId([7; 32]), index: 5, size: 10 };
        let frame = wire::encode_frame(&Message::Piece { id: RequestId(0), header }).expect("fits");
        let mut out = Vec::new();
        assert!(Splitter::default().push(&frame, &mut out).is_err(), "piece 5 of a 10-byte file");
        let mut big = ((FRAME_LEN_MAX + 1) as u32).to_be_bytes().to_vec();
        big.push(WIRE_VERSION);
        assert!(matches!(Splitter::default().push(&big, &mut out), Err(WireError::FrameTooLarge { .. })));
    }
}
