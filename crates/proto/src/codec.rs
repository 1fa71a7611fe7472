//! The codec of every hearth.v1 service: prost's, except that a request that cannot be decoded
//! (e.g. invalid UTF-8 in a `string` field) is the client's error, `INVALID_ARGUMENT`, with prost's
//! message naming the field (`GenerateRequest.text: invalid string value: …`). tonic-prost maps
//! decode errors to `INTERNAL`, which would blame the server.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with client-blaming decode errors.
#[derive(Debug)]
pub struct HearthCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for HearthCodec<T, U> {
    fn default() -> Self {
        HearthCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for HearthCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = HearthDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        HearthDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] whose failures are `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct HearthDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for HearthDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|e| Status::invalid_argument(format!("malformed request: {}", e.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
