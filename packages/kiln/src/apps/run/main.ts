#!/usr/bin/env node
// kiln-run: the service of every Runner application (see run-service.ts).
import { serve } from "@kiln/service";
import { RunService } from "./run-service.js";

await serve(new RunService().handlers());
