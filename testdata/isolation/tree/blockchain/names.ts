import TW from 'tronweb';
import { Keys as K } from "@scope/harmless";

export const isTronAddress = (a: string) => a.length > 0;
export let amountTRX = 1;
export const usdtBalance = 0;
const lazy = require(`tronweb`);
export async function load() {
  return await import("../payment-systems/tron/api");
}
