pub mod proto {
    tonic::include_proto!("ocs.lifecycle.v1");
}
