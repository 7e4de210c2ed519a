//! The protobuf codec of our gRPC servers (named in build.rs): tonic-prost's `ProstCodec`,
//! except that a request body that is not a valid message of the method's request type is
//! `INVALID_ARGUMENT` with ErrorInfo reason `MALFORMED_REQUEST` — the caller sent bad input —
//! instead of tonic's `INTERNAL` "failed to decode Protobuf message", which reads like a fault
//! of the server and would set off the operators' alerts on `Internal`. The handler never runs,
//! so nothing is written. Encoding is tonic-prost's, unchanged.
//!
//! A message over the size limit is refused by tonic before any decoder runs (`OUT_OF_RANGE`)
//! and is not affected. The generated clients keep tonic-prost's codec (build.rs): an answer a
//! client cannot decode is still `INTERNAL` there.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::convert;

/// The ErrorInfo reason of an undecodable request.
pub const MALFORMED_REQUEST: &str = "MALFORMED_REQUEST";

/// Encodes `T` (the response) and decodes `U` (the request) like [`ProstCodec`].
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self {
            prost: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder {
            prost: self.prost.decoder(),
        }
    }
}

/// [`ProstDecoder`] with its decode error answered as bad input.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    prost: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The only error of `ProstDecoder::decode` is prost's `DecodeError` (as INTERNAL).
        self.prost.decode(buf).map_err(|prost| malformed(&prost))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}

/// The answer to a body prost could not decode; `prost` is tonic-prost's INTERNAL status,
/// whose message is prost's (`failed to decode Protobuf message: RechargeRequest.msisdn: …`).
fn malformed(prost: &Status) -> Status {
    convert::status(
        Code::InvalidArgument,
        MALFORMED_REQUEST,
        format!(
            "the request body is not a valid protobuf message of this method's request type ({})",
            prost.message()
        ),
    )
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    // `DecodeBuf` cannot be built outside tonic: the decoder itself is tested through a real
    // server (tests/fuzz.rs).
    #[test]
    fn an_undecodable_body_is_invalid_argument_malformed_request_with_prosts_reason() {
        // Field 1 (msisdn), 5 bytes long, with 1 present.
        let prost_error = crate::proto::RechargeRequest::decode(&[0x0a, 0x05, b'8'][..])
            .expect_err("a cut message");
        let status = malformed(&Status::internal(prost_error.to_string()));
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let info = status.get_error_details().error_info().cloned();
        assert_eq!(
            info.map(|i| (i.reason, i.domain)),
            Some((
                MALFORMED_REQUEST.to_owned(),
                convert::ERROR_DOMAIN.to_owned()
            ))
        );
        assert!(
            status.message().contains("not a valid protobuf message")
                && status.message().contains(&prost_error.to_string()),
            "{status:?}"
        );
    }
}
