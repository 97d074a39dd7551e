import type { ServiceImpl } from "@connectrpc/connect";
import { kiln } from "@kiln/protocol/proto";
import { KilnError } from "@kiln/protocol";
import { AgentConnection } from "../agent-connection.js";
import type { Orchestrator } from "../orchestrator.js";

/**
 * kiln.v1.Agent/Connect: one bidirectional stream per agent. Inbound
 * messages are applied as they arrive; outbound messages come from the
 * connection's queue.
 */
export function agentService(orchestrator: Orchestrator, log: (line: string) => void): ServiceImpl<typeof kiln.Agent> {
  return {
    async *connect(requests, ctx) {
      const conn = new AgentConnection();
      const consume = async () => {
        try {
          for await (const msg of requests) {
            orchestrator.heartbeat(conn);
            switch (msg.kind.case) {
              case "register":
                orchestrator.register(conn, msg.kind.value);
                break;
              case "heartbeat":
                break;
              case "executors":
                orchestrator.reports(conn, msg.kind.value.reports);
                break;
              case "completions":
                orchestrator.completions(conn, msg.kind.value.completions);
                break;
              default:
                break;
            }
          }
          conn.close();
          orchestrator.disconnected(conn, "stream ended");
        } catch (err) {
          // A refusal (e.g. a node name another agent holds) ends the stream with its status, so the agent can say why.
          conn.close(err instanceof KilnError ? err : undefined);
          orchestrator.disconnected(conn, (err as Error).message);
        }
      };
      const stop = () => {
        conn.close();
        orchestrator.disconnected(conn, "stream aborted");
      };
      ctx.signal.addEventListener("abort", stop);
      void consume().catch((err: unknown) => log(`agent stream: ${(err as Error).message}`));
      try {
        yield* conn.outbound;
      } finally {
        ctx.signal.removeEventListener("abort", stop);
      }
    },
  };
}
