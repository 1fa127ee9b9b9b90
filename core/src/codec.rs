//! The gRPC codec of every blobvirt service: prost's, except that the
//! encoder reserves the whole encoded message before it writes it.
//!
//! tonic's encode buffer starts at 8 KiB and prost writes a chunk's bytes
//! into it with `put_slice`, so a 256 KiB chunk used to grow the buffer five
//! times (8 → 256 KiB, each a `realloc` that copies what is there and faults
//! in fresh pages): about 2× the chunk in extra copies and 15% of the
//! client's CPU during an import (perf, issue 14). One `reserve` of
//! `encoded_len` makes it one allocation and one copy. (Every RPC of the
//! test suites goes through it; tonic's buffers cannot be built outside
//! tonic for a unit test.)

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, EncodeBuf, Encoder};
use tonic::Status;

/// Used by the generated clients and servers (`codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        // The decoder already reserves the whole message once its length
        // prefix is in.
        tonic_prost::ProstDecoder::new(BufferSettings::default())
    }
}

/// prost encoding into a buffer reserved for the whole message.
#[derive(Debug, Clone, Copy)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message failed: {e}")))
    }
}
