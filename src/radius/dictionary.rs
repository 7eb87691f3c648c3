//! The RADIUS wire tables: packet codes, attribute types and values used by
//! warden, each citing its RFC. Everything else decodes as `Unknown(n)`.

/// Declares a one-byte code table with an `Unknown(u8)` fallback.
macro_rules! table {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
            /// A value warden has no name for.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v {
                    $($value => Self::$variant,)*
                    other => Self::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v {
                    $($name::$variant => $value,)*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

table! {
    /// RADIUS packet codes.
    Code {
        /// RFC 2865 §4.1
        AccessRequest = 1,
        /// RFC 2865 §4.2
        AccessAccept = 2,
        /// RFC 2865 §4.3
        AccessReject = 3,
        /// RFC 2866 §4.1
        AccountingRequest = 4,
        /// RFC 2866 §4.2
        AccountingResponse = 5,
        /// RFC 2865 §4.4
        AccessChallenge = 11,
        /// RFC 5997
        StatusServer = 12,
        /// RFC 5176 §2.1
        DisconnectRequest = 40,
        /// RFC 5176 §2.1
        DisconnectAck = 41,
        /// RFC 5176 §2.1
        DisconnectNak = 42,
        /// RFC 5176 §2.2
        CoaRequest = 43,
        /// RFC 5176 §2.2
        CoaAck = 44,
        /// RFC 5176 §2.2
        CoaNak = 45,
    }
}

table! {
    /// Attribute types.
    AttrType {
        /// RFC 2865 §5.1
        UserName = 1,
        /// RFC 2865 §5.2
        UserPassword = 2,
        /// RFC 2865 §5.3
        ChapPassword = 3,
        /// RFC 2865 §5.4
        NasIpAddress = 4,
        /// RFC 2865 §5.5
        NasPort = 5,
        /// RFC 2865 §5.6
        ServiceType = 6,
        /// RFC 2865 §5.8
        FramedIpAddress = 8,
        /// RFC 2865 §5.11
        FilterId = 11,
        /// RFC 2865 §5.12
        FramedMtu = 12,
        /// RFC 2865 §5.18
        ReplyMessage = 18,
        /// RFC 2865 §5.24
        State = 24,
        /// RFC 2865 §5.25
        Class = 25,
        /// RFC 2865 §5.26
        VendorSpecific = 26,
        /// RFC 2865 §5.27
        SessionTimeout = 27,
        /// RFC 2865 §5.30
        CalledStationId = 30,
        /// RFC 2865 §5.31
        CallingStationId = 31,
        /// RFC 2865 §5.32
        NasIdentifier = 32,
        /// RFC 2865 §5.33
        ProxyState = 33,
        /// RFC 2866 §5.1
        AcctStatusType = 40,
        /// RFC 2866 §5.2
        AcctDelayTime = 41,
        /// RFC 2866 §5.3
        AcctInputOctets = 42,
        /// RFC 2866 §5.4
        AcctOutputOctets = 43,
        /// RFC 2866 §5.5
        AcctSessionId = 44,
        /// RFC 2866 §5.6
        AcctAuthentic = 45,
        /// RFC 2866 §5.7
        AcctSessionTime = 46,
        /// RFC 2866 §5.10
        AcctTerminateCause = 49,
        /// RFC 2869 §5.3
        EventTimestamp = 55,
        /// RFC 2865 §5.41
        NasPortType = 61,
        /// RFC 2868 §3.1
        TunnelType = 64,
        /// RFC 2868 §3.2
        TunnelMediumType = 65,
        /// RFC 3579 §3.1
        EapMessage = 79,
        /// RFC 3579 §3.2
        MessageAuthenticator = 80,
        /// RFC 2868 §3.6
        TunnelPrivateGroupId = 81,
        /// RFC 2869 §5.16
        AcctInterimInterval = 85,
        /// RFC 2869 §5.17
        NasPortId = 87,
        /// RFC 5176 §3.5
        ErrorCause = 101,
    }
}

table! {
    /// Acct-Status-Type values (RFC 2866 §5.1).
    AcctStatus {
        Start = 1,
        Stop = 2,
        InterimUpdate = 3,
        AccountingOn = 7,
        AccountingOff = 8,
    }
}

/// Error-Cause values (RFC 5176 §3.5), 32-bit on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCause {
    ResidualSessionContextRemoved,
    InvalidEapPacket,
    UnsupportedAttribute,
    MissingAttribute,
    NasIdentificationMismatch,
    InvalidRequest,
    UnsupportedService,
    UnsupportedExtension,
    InvalidAttributeValue,
    AdministrativelyProhibited,
    RequestNotRoutable,
    SessionContextNotFound,
    SessionContextNotRemovable,
    OtherProxyProcessingError,
    ResourcesUnavailable,
    RequestInitiated,
    MultipleSessionSelectionUnsupported,
    Unknown(u32),
}

impl ErrorCause {
    const TABLE: [(u32, ErrorCause); 17] = [
        (201, Self::ResidualSessionContextRemoved),
        (202, Self::InvalidEapPacket),
        (401, Self::UnsupportedAttribute),
        (402, Self::MissingAttribute),
        (403, Self::NasIdentificationMismatch),
        (404, Self::InvalidRequest),
        (405, Self::UnsupportedService),
        (406, Self::UnsupportedExtension),
        (407, Self::InvalidAttributeValue),
        (501, Self::AdministrativelyProhibited),
        (502, Self::RequestNotRoutable),
        (503, Self::SessionContextNotFound),
        (504, Self::SessionContextNotRemovable),
        (505, Self::OtherProxyProcessingError),
        (506, Self::ResourcesUnavailable),
        (507, Self::RequestInitiated),
        (508, Self::MultipleSessionSelectionUnsupported),
    ];

    pub fn value(self) -> u32 {
        match self {
            Self::Unknown(v) => v,
            known => Self::TABLE.iter().find(|(_, c)| *c == known).map_or(0, |(v, _)| *v),
        }
    }
}

impl From<u32> for ErrorCause {
    fn from(v: u32) -> Self {
        Self::TABLE.iter().find(|(n, _)| *n == v).map_or(Self::Unknown(v), |(_, c)| *c)
    }
}

/// Tunnel-Type VLAN (RFC 3580 §3.31).
pub const TUNNEL_TYPE_VLAN: u32 = 13;
/// Tunnel-Medium-Type IEEE-802 (RFC 2868 §3.2, RFC 3580).
pub const TUNNEL_MEDIUM_IEEE_802: u32 = 6;
/// Microsoft's vendor id (RFC 2548).
pub const VENDOR_MICROSOFT: u32 = 311;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_and_keep_unknowns() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(Code::from(v)), v);
            assert_eq!(u8::from(AttrType::from(v)), v);
        }
        assert_eq!(Code::from(43), Code::CoaRequest);
        assert_eq!(AttrType::from(80), AttrType::MessageAuthenticator);
        assert_eq!(Code::from(99), Code::Unknown(99));
        assert_eq!(ErrorCause::from(503), ErrorCause::SessionContextNotFound);
        assert_eq!(ErrorCause::from(503).value(), 503);
        assert_eq!(ErrorCause::from(999), ErrorCause::Unknown(999));
    }
}
