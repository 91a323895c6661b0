//! The control session and enrollment: the mTLS gRPC stream to the controller
//! (`session`), and the node identity and certificate enrollment (`enroll`).

pub mod enroll;
pub mod session;
