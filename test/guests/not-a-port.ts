// A bridge-port module that makes no usable port (no output method): addBridgePort must refuse it.
export default function notAPort(): { name: string } {
  return { name: 'broken' };
}
