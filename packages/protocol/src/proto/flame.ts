// flame.v1: Flame's wire schema (client API, service API, shared types).
export * from "../gen/flame/v1/types_pb.js";
export * from "../gen/flame/v1/frontend_pb.js";
export * from "../gen/flame/v1/shim_pb.js";
