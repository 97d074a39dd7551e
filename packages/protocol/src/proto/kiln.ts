// kiln.v1: Kiln's own additions (batch client API, batched instance stream, agent stream).
export * from "../gen/kiln/v1/frontend_pb.js";
export * from "../gen/kiln/v1/instance_pb.js";
export * from "../gen/kiln/v1/agent_pb.js";
