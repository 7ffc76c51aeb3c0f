/**
 * Joins a local TCP socket and a mux stream (as a MuxDuplex) in both directions, with half-close
 * and backpressure, and turns failures into the right kind of ending on each side: a reset on
 * the stream becomes a TCP RST locally, a local socket error becomes a stream reset.
 */
import type { Socket } from 'node:net';
import { type MuxStream, StreamErrorCode, StreamResetError } from '@narrowlink/protocol';
import { MuxDuplex } from '@narrowlink/protocol/stream';

export interface BridgeResult {
  /** Resolves when both directions are done; carries the reset, if the stream was reset. */
  done: Promise<StreamResetError | undefined>;
  duplex: MuxDuplex;
}

export function bridgeSocket(socket: Socket, stream: MuxStream): BridgeResult {
  const duplex = new MuxDuplex(stream);
  const done = new Promise<StreamResetError | undefined>((resolve) => {
    let finished = false;
    const finish = (reason: StreamResetError | undefined): void => {
      if (finished) return;
      finished = true;
      resolve(reason);
    };
    socket.on('error', (error: NodeJS.ErrnoException) => {
      duplex.destroy(new StreamResetError(StreamErrorCode.CANCELLED, `local socket: ${error.code ?? error.message}`));
    });
    duplex.on('error', (error: Error) => {
      // The far side reset: abort the local connection so its owner sees a reset, not a clean end.
      if (!socket.destroyed) socket.resetAndDestroy();
      finish(error instanceof StreamResetError ? error : new StreamResetError(StreamErrorCode.INTERNAL, error.message));
    });
    socket.on('close', () => {
      if (!duplex.destroyed && (stream.state !== 'closed')) {
        // The socket closed before both directions finished on the stream: cancel it.
        if (!(socket.readableEnded && duplex.writableFinished && duplex.readableEnded)) duplex.destroy();
      }
      finish(duplex.resetReason);
    });
    duplex.on('close', () => {
      if (!socket.destroyed && duplex.resetReason === undefined && socket.writableFinished && socket.readableEnded) socket.destroy();
    });
  });
  socket.pipe(duplex);
  duplex.pipe(socket);
  return { done, duplex };
}
