// Stand-in for the frontend's `api`: an EventTarget that re-dispatches websocket messages of custom types as
// CustomEvents whose `detail` is the message data (comfyui-facts.md section 6).
class Api extends EventTarget {
  fetchApi(route, options) {
    return fetch(`/api${route}`, options); // ComfyUI mirrors every route under /api
  }
  receive(type, data) {
    this.dispatchEvent(new CustomEvent(type, { detail: data }));
  }
}
export const api = new Api();
