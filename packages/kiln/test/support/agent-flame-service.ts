// A Flame-style service for the agent tests: serves flame.v1.Instance only
// (no kiln.v1.Instance/Invoke), the way a Flame SDK service does.
import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { flame } from "@kiln/protocol/proto";
import * as http2 from "node:http2";

const socketPath = process.env.FLAME_INSTANCE_ENDPOINT!;
let commonData = "";

const server = http2.createServer(
  connectNodeAdapter({
    routes: (router) =>
      router.service(flame.Instance, {
        onSessionEnter(ctx) {
          commonData = new TextDecoder().decode(ctx.commonData);
          return create(flame.ResultSchema, { returnCode: 0 });
        },
        onTaskInvoke(task) {
          const input = new TextDecoder().decode(task.input);
          const output = new TextEncoder().encode(`flame:${task.taskId}:${input}:${commonData}`);
          return create(flame.TaskResultSchema, { returnCode: 0, output });
        },
        onSessionLeave: () => create(flame.ResultSchema, { returnCode: 0 }),
      }),
  }),
);
server.listen(socketPath);
process.once("SIGTERM", () => server.close(() => process.exit(0)));
