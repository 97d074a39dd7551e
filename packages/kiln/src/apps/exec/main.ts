#!/usr/bin/env node
// kiln-exec: the built-in service that runs jobs (commands with declared outputs; see exec-service.ts).
import { serve } from "@kiln/service";
import { ExecService } from "./exec-service.js";

await serve(new ExecService().handlers());
