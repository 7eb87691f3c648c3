//! warden's RADIUS codec cross-checked against an independent
//! implementation, the `radius` crate (a dev-dependency only: it lacks the
//! Message-Authenticator and vendor attributes warden needs, see
//! ../shared/DEPENDENCIES.md, but its authenticators and attribute encoding
//! are a fair second opinion).

use proptest::prelude::*;
use radius::core::code::Code as OCode;
use radius::core::packet::Packet as OPacket;
use radius::core::{rfc2865, rfc2866};
use warden::radius::crypto::unhide_password;
use warden::radius::{AttrType, Builder, Code, Packet};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Their Access-Request, our decoder: same attributes, same password.
    #[test]
    fn we_read_their_access_requests(user in "[a-z]{1,20}", password in "[ -~]{1,100}", id in any::<u8>(),
                                     secret in "[a-zA-Z0-9]{1,40}", port in any::<u32>()) {
        let mut theirs = OPacket::new_with_identifier(OCode::AccessRequest, secret.as_bytes(), id);
        rfc2865::add_user_name(&mut theirs, &user);
        rfc2865::add_user_password(&mut theirs, password.as_bytes()).unwrap();
        rfc2865::add_nas_port(&mut theirs, port);
        let bytes = theirs.encode().unwrap();
        let p = Packet::decode(&bytes).unwrap();
        prop_assert_eq!(p.identifier(), id);
        prop_assert_eq!(p.attr_str(AttrType::UserName), Some(user.as_str()));
        prop_assert_eq!(p.attr_u32(AttrType::NasPort), Some(port));
        let hidden = p.attr(AttrType::UserPassword).unwrap();
        prop_assert_eq!(unhide_password(hidden, secret.as_bytes(), &p.authenticator()), password.as_bytes());
    }

    /// Our Access-Accept to their request: byte for byte what they build,
    /// and authentic by their check.
    #[test]
    fn our_responses_match_theirs(message in "[ -~]{1,200}", id in any::<u8>(), secret in "[a-zA-Z0-9]{1,40}",
                                  reject in any::<bool>()) {
        let request = OPacket::new_with_identifier(OCode::AccessRequest, secret.as_bytes(), id);
        let request_bytes = request.encode().unwrap();
        let (ocode, code) = if reject { (OCode::AccessReject, Code::AccessReject) } else { (OCode::AccessAccept, Code::AccessAccept) };
        let mut theirs = request.make_response_packet(ocode);
        rfc2865::add_reply_message(&mut theirs, &message);
        let their_bytes = theirs.encode().unwrap();
        let mut ours = Builder::new(code, id, false);
        ours.attr(AttrType::ReplyMessage, message.as_bytes()).unwrap();
        let ra: [u8; 16] = request_bytes[4..20].try_into().unwrap();
        let our_bytes = ours.finish_response(secret.as_bytes(), &ra);
        prop_assert_eq!(&our_bytes, &their_bytes);
        prop_assert!(OPacket::is_authentic_response(&our_bytes, &request_bytes, secret.as_bytes()));
    }

    /// Request Authenticators of Accounting and CoA requests, both ways.
    #[test]
    fn computed_request_authenticators_agree(session in "[a-z0-9-]{1,40}", id in any::<u8>(), secret in "[a-zA-Z0-9]{1,40}") {
        for (ocode, code) in [(OCode::AccountingRequest, Code::AccountingRequest), (OCode::CoARequest, Code::CoaRequest), (OCode::DisconnectRequest, Code::DisconnectRequest)] {
            let mut theirs = OPacket::new_with_identifier(ocode, secret.as_bytes(), id);
            rfc2866::add_acct_status_type(&mut theirs, rfc2866::ACCT_STATUS_TYPE_START);
            rfc2866::add_acct_session_id(&mut theirs, &session);
            let their_bytes = theirs.encode().unwrap();
            prop_assert!(Packet::decode(&their_bytes).unwrap().request_authenticator_valid(secret.as_bytes()));
            let mut ours = Builder::new(code, id, false);
            ours.attr_u32(AttrType::AcctStatusType, 1).unwrap();
            ours.attr(AttrType::AcctSessionId, session.as_bytes()).unwrap();
            let our_bytes = ours.finish_request(secret.as_bytes());
            prop_assert_eq!(&our_bytes, &their_bytes);
            prop_assert!(OPacket::is_authentic_request(&our_bytes, secret.as_bytes()));
        }
    }
}
