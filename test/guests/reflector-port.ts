// A user's bridge-port module for the tests (Machine.addBridgePort): every unicast
// or broadcast frame it gets goes back into the bridge with source and destination
// swapped (a broadcast comes back to its sender) and the port's own MAC as source
// when the destination was a broadcast; it counts what it saw.
import type { BridgePortModule } from '../../netback/bridge.ts';

const reflector: BridgePortModule = (ctx) => {
  const mac = (ctx.args as { mac: number[] }).mac;
  let seen = 0;
  return {
    name: `reflector@${ctx.bridge}`,
    output(frame) {
      seen++;
      const back = frame.slice();
      back.set(frame.subarray(6, 12), 0); // to the sender
      back.set(mac, 6); // from the port
      ctx.input(back);
      if (seen === 1) ctx.log('first frame reflected');
    },
  };
};
export default reflector;
