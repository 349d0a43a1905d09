/**
 * The promise's value, or what `late` gives (or throws) when `ms` pass first. The timer goes either
 * way; a failure of the promise after the deadline answered is not left unhandled.
 */
export function withDeadline<T, L>(promise: Promise<T>, ms: number, late: () => L): Promise<T | L> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<L>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(late())
      } catch (error) {
        reject(error)
      }
    }, ms)
  })
  promise.catch(() => undefined) // raced below: the race reports a failure that comes in time
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}
