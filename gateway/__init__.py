"""The thin gateway: REST (FastAPI) and gRPC (grpc.aio) in front of Triton, from one service layer."""
