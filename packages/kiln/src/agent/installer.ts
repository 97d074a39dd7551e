import { kiln, type flame } from "@kiln/sdk/proto";
import { BindError } from "./bind-error.js";

/**
 * Makes an application's package available on this node before its process
 * starts. Package delivery does not exist yet, so an application with a URL
 * fails here with BIND_FAILURE_INSTALL; commands already on the node need
 * nothing. The download/verify/extract step slots in here.
 */
export async function installApplication(application: flame.ApplicationSpec): Promise<void> {
  if (application.url) {
    throw new BindError(kiln.BindFailure.INSTALL, `package URLs are not supported yet (url: ${application.url})`);
  }
}
