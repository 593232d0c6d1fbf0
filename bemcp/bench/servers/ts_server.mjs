// The `ts` peer: echo and sleep on the official TypeScript SDK's high-level API,
// over stdio. `bemcp bench` installs its dependencies into its cache directory.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

const server = new McpServer({ name: "ts-echo", version: "1.0.0" });

server.registerTool(
  "echo",
  { description: "Return the text unchanged.", inputSchema: { text: z.string() } },
  async ({ text }) => ({ content: [{ type: "text", text }] }),
);

server.registerTool(
  "sleep",
  { description: "Sleep for the given number of seconds.", inputSchema: { seconds: z.number() } },
  async ({ seconds }) => {
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    return { content: [{ type: "text", text: `slept ${seconds}` }] };
  },
);

await server.connect(new StdioServerTransport());
