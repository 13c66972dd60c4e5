// app.js: the entry point. Routes on the path: /r/<room> (and free4chat's /<room>) open the
// room page, anything else the home page. The gateway serves index.html for those paths.
import { renderHome } from './home.js';
import { renderRoom } from './room.js';

function roomFromPath(path) {
  let m = /^\/r\/([^/]+)/.exec(path);
  if (!m) m = /^\/([^/.]+)\/?$/.exec(path);   // free4chat-style /<room>
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

const root = document.getElementById('app');
const room = roomFromPath(location.pathname);
if (room) {
  if (!location.pathname.startsWith('/r/')) history.replaceState(null, '', `/r/${encodeURIComponent(room)}${location.search}`);
  renderRoom(root, room);
} else {
  window.chatgw = { home: renderHome(root) };
}
